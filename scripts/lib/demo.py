"""The demo: one testbed host, a local Pebble, `tako servers add` + `tako deploy` of examples/hello, and
the app fetched over verified HTTPS. Everything the demo creates lives under /var/tmp/tako-demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.acme_testbed import AcmeOptions, configure_acme  # noqa: E402
from tests.support.pebble import Pebble  # noqa: E402
from tests.support.testbed import Host, Testbed  # noqa: E402

STATE = Path("/var/tmp/tako-demo")
ROUTE = "hello.tako.test"
HOST_NAME = "web"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def tako(*args: str, cwd: Path | None = None, env: dict[str, str]) -> None:
    shown = " ".join(args)
    print(f"$ tako {shown}", flush=True)
    subprocess.run([str(ROOT / ".venv/bin/tako"), *args], cwd=cwd, env=env, check=True)


def user_home(host: Host) -> Path:
    """A fresh HOME set up as a user's would be: the host's authorized key as ~/.ssh/id_ed25519 (0600 in a
    0700 ~/.ssh); Tako keeps its inventory and known_hosts in ~/.tako there."""
    home = STATE / "home"
    shutil.rmtree(home, ignore_errors=True)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    ssh_dir.chmod(0o700)
    shutil.copyfile(host.key, ssh_dir / "id_ed25519")
    (ssh_dir / "id_ed25519").chmod(0o600)
    shutil.copyfile(f"{host.key}.pub", ssh_dir / "id_ed25519.pub")
    return home


def fetch(host: Host, root_ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            str(root_ca),
            "--resolve",
            f"{ROUTE}:443:{host.address}",
            f"https://{ROUTE}/",
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("error: the demo creates network namespaces: run it as root", file=sys.stderr)
        return 2
    bed = Testbed(STATE / "testbed", "demo-")
    if argv[:1] == ["down"]:
        bed.destroy()
        print("demo host removed")
        return 0

    say("bringing up a fresh testbed host (network namespace, sshd, tako-server)")
    bed.destroy()  # a fresh host each run: Pebble's root changes at every start
    host = bed.up(HOST_NAME)[0]
    print(f"host {HOST_NAME} at {host.address}")

    pebble_dir = STATE / "pebble"
    shutil.rmtree(pebble_dir, ignore_errors=True)
    with Pebble(pebble_dir, http_port=80, listen_host=host.gateway) as pebble:
        say(f"local ACME server (Pebble) at {pebble.directory_url}; DNS {ROUTE} -> {host.address}")
        pebble.add_a(ROUTE, host.address)
        configure_acme(host, pebble, AcmeOptions(email="demo@tako.test"))
        root_ca = STATE / "pebble-root.pem"
        root_ca.write_bytes(pebble.root_pem())

        home = user_home(host)
        env = {**os.environ, "HOME": str(home)}
        for name in ("TAKO_HOME", "TAKO_SSH_KEY", "SSH_AUTH_SOCK"):  # only the demo user's own setup
            env.pop(name, None)
        app = STATE / "hello"
        shutil.rmtree(app, ignore_errors=True)
        shutil.copytree(
            ROOT / "examples" / "hello", app, ignore=shutil.ignore_patterns(".tako", "__pycache__")
        )
        with (app / "tako.toml").open("a") as toml:
            toml.write(f'\n[servers.{HOST_NAME}]\nenv = "production"\n')

        say("registering the server and deploying examples/hello")
        tako("servers", "add", host.address, "--name", HOST_NAME, env=env)
        tako("deploy", "--yes", cwd=app, env=env)

        say(f"waiting for the certificate of {ROUTE} from Pebble")
        deadline = time.monotonic() + 90
        result = fetch(host, root_ca)
        while result.returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            result = fetch(host, root_ca)
        if result.returncode != 0:
            print(
                f"error: HTTPS did not verify against Pebble's root: {result.stderr.strip()}", file=sys.stderr
            )
            return 1
        say(f"curl --cacert {root_ca} --resolve {ROUTE}:443:{host.address} https://{ROUTE}/")
        print(result.stdout, end="", flush=True)

    print(f"\nThe host keeps serving: HOME={home} .venv/bin/tako status\nRemove it with: scripts/demo down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
