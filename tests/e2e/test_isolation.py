"""End to end on a testbed host installed by install-server: each app runs as its own unprivileged uid with
no capabilities, cannot reach another app's files nor tako-server's keys, state or control socket, and a
0600 file of the project arrives readable by its app only.

Both apps are the same small probe app (written by the test): it answers what its process may read,
list, write and connect to, and who it runs as.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.projects import body_and_status, commit_all, curl, make_project, wait_for
from tests.support.testbed import Host

pytestmark = pytest.mark.e2e

SERVER = "iso1"
APPS = ("isoa", "isob")
SECRET_FILE = "private.key"
SECRET_TEXT = "only-for-isoa"

PROBE_APP = '''\
"""Answers what this process may do: GET /read?path=, /list?path=, /write?path=, /connect?path=,
/symlink?path=TARGET|LINK, /whoami."""
import json, os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def attempt(action, path):
    try:
        if action == "read":
            with open(path, "rb") as f:
                return {"ok": True, "value": f.read(200).decode(errors="replace")}
        if action == "list":
            return {"ok": True, "value": sorted(os.listdir(path))}
        if action == "write":
            with open(path, "w") as f:
                f.write("written")
            return {"ok": True, "value": ""}
        if action == "symlink":
            target, _, link = path.partition("|")
            os.symlink(target, link)
            return {"ok": True, "value": ""}
        if action == "connect":
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(path)
            return {"ok": True, "value": ""}
    except OSError as exc:
        return {"ok": False, "value": exc.__class__.__name__}
    raise ValueError(action)


def whoami():
    caps = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Cap"):
                key, value = line.split(":")
                caps[key] = int(value.strip(), 16)
    env = {k: os.environ.get(k, "") for k in ("HOME", "USER", "LOGNAME")}
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "pid": os.getpid(),
            "caps": caps, "env": env}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        action = url.path.strip("/")
        if action == "whoami":
            body = whoami()
        elif action in ("read", "list", "write", "connect", "symlink"):
            body = attempt(action, parse_qs(url.query)["path"][0])
        else:
            body = {"ok": True}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def route(app: str) -> str:
    return f"{app}.tako.test"


@dataclass
class Deployed:
    host: Host
    versions: dict[str, str]


@pytest.fixture(scope="module")
def deployed(cli: TakoCLI, host: Host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("iso-projects")
    versions: dict[str, str] = {}
    for app in APPS:
        project = make_project(
            root,
            name=app,
            route=route(app),
            servers={SERVER: "production"},
            extra_toml=f'\n[vars]\nAPP_SECRET = "secret-of-{app}"\n',
        )
        (project / "app.py").write_text(PROBE_APP)
        (project / SECRET_FILE).write_text(SECRET_TEXT)
        (project / SECRET_FILE).chmod(0o600)
        commit_all(project, "probe app")
        proc = cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host))
        assert "1/1 server(s) succeeded" in proc.stdout + proc.stderr
        versions[app] = remote(host, f"readlink /opt/tako/apps/{app}/current").rsplit("/", 1)[1]
    yield Deployed(host, versions)
    for app in APPS:
        cli.run("delete", "--yes", "--app", app, "--server", SERVER, env=user_ssh_env(host))


def remote(host: Host, command: str) -> str:
    result = host.exec(command)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout.strip()


def exists(host: Host, path: str) -> bool:
    return host.exec(["test", "-f", path]).returncode == 0


def ask(host: Host, app: str, action: str, path: str = "") -> dict[str, object]:
    query = f"/{action}?path={urllib.parse.quote(path)}" if path else f"/{action}"
    body, status = body_and_status(curl(host.address, route(app), query))
    assert status == 200, body
    answer: dict[str, object] = json.loads(body)
    return answer


def release_dir(deployed: Deployed, app: str) -> str:
    return f"/opt/tako/apps/{app}/releases/{deployed.versions[app]}"


def test_instances_run_as_distinct_unprivileged_uids_without_capabilities(deployed: Deployed) -> None:
    host = deployed.host
    tako_uid = int(remote(host, "id -u tako"))
    who = {app: ask(host, app, "whoami") for app in APPS}
    uids = {app: who[app]["uid"] for app in APPS}
    assert len(set(uids.values())) == len(APPS), uids
    for app in APPS:
        me = who[app]
        assert me["uid"] not in (0, tako_uid) and me["gid"] not in (0, tako_uid), me
        assert me["groups"] in ([], [me["gid"]]), me
        caps = me["caps"]
        assert isinstance(caps, dict)
        assert (caps["CapEff"], caps["CapPrm"], caps["CapAmb"], caps["CapInh"]) == (0, 0, 0, 0), me
        env = me["env"]
        assert isinstance(env, dict)
        assert env["USER"] == env["LOGNAME"] == app
        # Seen from outside too: the process tako-server supervises, not only what the app says.
        status = remote(host, f"cat /proc/{me['pid']}/status")
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split()[0] == str(me["uid"])
        for cap in ("CapEff", "CapPrm", "CapAmb"):
            assert int(fields[cap].strip(), 16) == 0, (app, cap, fields[cap])
        # Its HOME is its own to write.
        assert ask(host, app, "write", f"{env['HOME']}/probe")["ok"] is True


def test_an_app_cannot_read_another_apps_files(deployed: Deployed) -> None:
    host = deployed.host
    a_release = release_dir(deployed, "isoa")
    targets = [
        f"{a_release}/.env",
        f"{a_release}/app.py",
        f"{a_release}/{SECRET_FILE}",
        f"{a_release}/app.json",
        "/opt/tako/apps/isoa/current/.env",
    ]
    for path in targets:
        answer = ask(host, "isob", "read", path)
        assert answer == {"ok": False, "value": "PermissionError"}, (path, answer)
    for path in ("/opt/tako/apps/isoa", a_release, "/opt/tako/apps"):
        answer = ask(host, "isob", "list", path)
        assert answer == {"ok": False, "value": "PermissionError"}, (path, answer)


def test_an_app_cannot_reach_tako_servers_keys_state_or_control_socket(deployed: Deployed) -> None:
    host = deployed.host
    private = remote(host, "find /opt/tako/acme /opt/tako/certs /opt/tako/logs -type f").split()
    private += [p for p in ("/opt/tako/tako.db", "/opt/tako/tako.db-wal") if exists(host, p)]
    assert "/opt/tako/tako.db" in private
    for path in private:
        answer = ask(host, "isob", "read", path)
        assert answer["ok"] is False, (path, answer)
    for path in ("/opt/tako/acme", "/opt/tako/certs", "/opt/tako", "/var/run/tako"):
        answer = ask(host, "isob", "list", path)
        assert answer == {"ok": False, "value": "PermissionError"}, (path, answer)
    answer = ask(host, "isob", "connect", "/var/run/tako/tako.sock")
    assert answer == {"ok": False, "value": "PermissionError"}, answer
    # The deploy user (tako, over SSH) still talks to it.
    assert control(host, "list")["status"] == "ok"


def test_an_app_reads_its_own_files_and_a_0600_file_stays_private(deployed: Deployed) -> None:
    host = deployed.host
    a_release = release_dir(deployed, "isoa")
    assert ask(host, "isoa", "read", f"{a_release}/{SECRET_FILE}") == {"ok": True, "value": SECRET_TEXT}
    assert ask(host, "isoa", "read", f"{a_release}/app.py")["ok"] is True
    # Its code is not its own to change, and the release .env is tako-server's (values come in environ).
    assert ask(host, "isoa", "write", f"{a_release}/app.py")["ok"] is False
    assert ask(host, "isoa", "read", f"{a_release}/.env")["ok"] is False
    uid = ask(host, "isoa", "whoami")["uid"]
    mode_owner_group = remote(host, f"stat -c '%a %U %g' {a_release}/{SECRET_FILE} {a_release}/.env")
    assert mode_owner_group.splitlines() == [f"640 tako {uid}", "600 tako " + remote(host, "id -g tako")]
    body, status = body_and_status(curl(host.address, route("isoa"), "/"))
    assert status == 200, body


CONTROL = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect("/var/run/tako/tako.sock")
s.sendall(sys.argv[1].encode() + b"\\n")
print(s.makefile("rb").readline().decode())
"""

SET_UID = """
import sqlite3, sys
db = sqlite3.connect("/opt/tako/tako.db")
db.execute("UPDATE app_uids SET uid = ? WHERE app = ?", (int(sys.argv[2]), sys.argv[1]))
db.commit()
"""


def control(host: Host, command: str, **fields: str) -> dict[str, object]:
    """One control request over the socket, as the tako user (who the CLI connects as)."""
    line = json.dumps({"command": command, **fields})
    result = host.exec(["python3", "-c", CONTROL, line], user="tako")
    assert result.returncode == 0, result.stderr
    reply: dict[str, object] = json.loads(result.stdout)
    return reply


def restart_server(host: Host) -> None:
    remote(host, "tako-server-service restart")
    wait_for(lambda: control_answers(host), timeout=60, what="tako-server answering after a restart")


def control_answers(host: Host) -> bool:
    result = host.exec(["python3", "-c", CONTROL, '{"command":"hello"}'], user="tako")
    return result.returncode == 0 and '"ok"' in result.stdout


def test_shared_data_becomes_writable_by_its_app_only(deployed: Deployed) -> None:
    """`shared/data`, made by the operator as tako (with a file from before isolation), is the app's to
    write once tako-server restarts; another app still cannot enter it."""
    host = deployed.host
    data = "/opt/tako/apps/isoa/shared/data"
    host.exec(["sh", "-c", f"mkdir -p {data} && echo old > {data}/old.txt"], user="tako", check=True)
    # Links the app plants there are never followed when tako-server hands the directory over.
    private = "/opt/tako/acme /opt/tako/certs /opt/tako/tako.db"
    before = remote(host, f"stat -c '%a %U %G' {private}")
    restart_server(host)
    wait_for(lambda: healthy(host, "isoa"), timeout=60, what="isoa serving after the restart")
    for target in private.split():
        answer = ask(host, "isoa", "symlink", f"{target}|{data}/{target.rsplit('/', 1)[1]}")
        assert answer["ok"] is True, answer
    restart_server(host)
    wait_for(lambda: healthy(host, "isoa"), timeout=60, what="isoa serving after the restart")
    assert ask(host, "isoa", "write", f"{data}/old.txt")["ok"] is True
    assert ask(host, "isoa", "write", f"{data}/new.txt")["ok"] is True
    assert ask(host, "isoa", "read", f"{data}/new.txt") == {"ok": True, "value": "written"}
    assert ask(host, "isob", "read", f"{data}/new.txt") == {"ok": False, "value": "PermissionError"}
    assert remote(host, f"stat -c '%a %U %G' {private}") == before
    assert ask(host, "isoa", "read", f"{data}/tako.db")["ok"] is False


def healthy(host: Host, app: str) -> bool:
    return body_and_status(curl(host.address, route(app), "/"))[1] == 200


def test_instances_left_by_a_killed_server_are_adopted_and_later_replaced(deployed: Deployed) -> None:
    """An isolated instance outlives a killed tako-server, is adopted by the one the service supervisor
    starts, and is stopped like any other on a reload (signalling another uid's group needs CAP_KILL)."""
    host = deployed.host
    old = ask(host, "isoa", "whoami")["pid"]
    hello = control(host, "hello")["data"]
    assert isinstance(hello, dict) and hello["isolation"] == "on"
    remote(host, f"kill -KILL {hello['pid']}")
    wait_for(
        lambda: host.exec(["test", "-d", f"/proc/{hello['pid']}"]).returncode != 0, timeout=30, what="exit"
    )
    assert alive(host, old)  # the instance outlived its server
    wait_for(lambda: control_answers(host), timeout=60, what="tako-server answering again")
    wait_for(lambda: healthy(host, "isoa"), timeout=60, what="isoa serving again")
    assert ask(host, "isoa", "whoami")["pid"] == old  # adopted, not restarted
    assert control(host, "reload", app="isoa")["status"] == "ok"
    wait_for(lambda: not alive(host, old), timeout=30, what="the adopted instance stopped by the reload")
    assert ask(host, "isoa", "whoami")["pid"] != old


def alive(host: Host, pid: object) -> bool:
    """The process runs (a zombie waiting for its reaper does not count)."""
    result = host.exec(["cat", f"/proc/{pid}/stat"])
    return result.returncode == 0 and result.stdout.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_tampered_uid_in_the_state_db_is_refused(deployed: Deployed) -> None:
    """The state db is writable by tako: a row naming uid 0 or tako's own uid never makes an app run so."""
    host = deployed.host
    before = str(ask(host, "isob", "whoami")["uid"])
    log = "/opt/tako/logs/tako-server.log"
    try:
        for bad in ("0", remote(host, "id -u tako")):
            host.exec(["python3", "-c", SET_UID, "isob", bad], user="tako", check=True)
            skip = int(remote(host, f"wc -c < {log}"))
            restart_server(host)
            refused = f"refusing to run an app as uid {bad}"
            wait_for(
                lambda: refused in remote(host, f"tail -c +{skip + 1} {log}"),  # noqa: B023 - called at once
                timeout=60,
                what=f"tako-server's log to say {refused!r}",
            )
            assert body_and_status(curl(host.address, route("isob"), "/whoami"))[1] != 200
            wait_for(lambda: healthy(host, "isoa"), timeout=60, what="isoa serving after the restart")
            assert ask(host, "isoa", "whoami")["uid"] != int(bad)  # the other app is unaffected
    finally:
        host.exec(["python3", "-c", SET_UID, "isob", before], user="tako", check=True)
        restart_server(host)
    wait_for(lambda: healthy(host, "isob"), timeout=60, what="isob serving again")
    assert str(ask(host, "isob", "whoami")["uid"]) == before


def test_delete_removes_what_the_app_wrote(deployed: Deployed, cli: TakoCLI) -> None:
    """Files the app created under its own uid (in its HOME) do not stop `tako delete` removing its dir."""
    host = deployed.host
    home = ask(host, "isob", "whoami")["env"]
    assert isinstance(home, dict)
    assert ask(host, "isob", "write", f"{home['HOME']}/made-by-the-app")["ok"] is True
    owner = remote(host, f"stat -c %u {home['HOME']}/made-by-the-app")
    assert owner == str(ask(host, "isob", "whoami")["uid"])
    private = "/opt/tako/acme /opt/tako/certs /opt/tako/tako.db"
    before = remote(host, f"stat -c '%a %U %G' {private}")
    for target in private.split():
        assert (
            ask(host, "isob", "symlink", f"{target}|{home['HOME']}/{target.rsplit('/', 1)[1]}")["ok"] is True
        )
    cli.ok("delete", "--yes", "--app", "isob", "--server", SERVER, env=user_ssh_env(host))
    assert remote(host, f"stat -c '%a %U %G' {private}") == before
    assert host.exec(["test", "-e", "/opt/tako/apps/isob"]).returncode != 0
