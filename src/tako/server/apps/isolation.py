"""App isolation: each app runs as its own uid, behind its own app directory, with no capabilities.

An app's uid (also its gid) comes from a range no real account uses and needs no /etc/passwd entry. Its
directory `<data_dir>/apps/<app>` is owner tako, group = the app's gid, mode 0750: other apps cannot enter
it. Release files (and the app's virtualenvs) get the app's group with the owner's read/execute bits, so
the app reads its code but cannot change it; the release `.env` stays 0600 tako (tako-server passes its
values in the environment). tako-server needs CAP_SETUID/CAP_SETGID (to start instances as the app),
CAP_CHOWN (to give files to the app's group) and CAP_KILL (to signal instance groups of another uid).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from tako.errors import TakoError

# 200000-299999: above the uids of real accounts and of the subordinate ranges useradd hands out by
# default (100000 + 65536 per user), so an app can never share a uid with a person or a service.
UID_FIRST = 200_000
UID_COUNT = 100_000

# Capability bits (linux/capability.h) tako-server must hold in its effective set.
REQUIRED_CAPS = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7}
SETPRIV_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
HOME_DIR = "home"  # under <app>/shared: the app's HOME, the one directory of the app dir it may write
DATA_DIR = "data"  # under <app>/shared: made writable for the app when it exists


class IsolationError(TakoError):
    """An app cannot be run isolated (bad uid, release outside its app dir)."""


@dataclass(frozen=True)
class Isolation:
    """Whether apps run as their own uid, and why not when they do not."""

    enabled: bool
    reason: str = ""  # why isolation is off
    setpriv: str = ""

    def describe(self) -> str:
        return "on" if self.enabled else f"off ({self.reason})"


OFF = Isolation(False, "not configured")


def effective_caps(status_path: str = "/proc/self/status") -> int:
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def detect(setting: str) -> Isolation:
    """Isolation for `[apps] isolation` ("auto" or "off"): auto is on when the capabilities are held."""
    if setting == "off":
        return Isolation(False, 'isolation = "off" in server-config.toml')
    caps = effective_caps()
    missing = [name for name, bit in REQUIRED_CAPS.items() if not caps & (1 << bit)]
    if missing:
        return Isolation(
            False,
            f"tako-server lacks {', '.join(missing)}; start it with install-server's systemd unit or "
            "tako-server-service, which grant them",
        )
    setpriv = shutil.which("setpriv", path=SETPRIV_PATH)
    if setpriv is None:
        return Isolation(False, "setpriv is not installed (Debian package util-linux)")
    return Isolation(True, setpriv=setpriv)


def check_uid(uid: int) -> int:
    """`uid` if it is an app uid; anything else (0, tako's own, a tampered state row) is refused."""
    if not UID_FIRST <= uid < UID_FIRST + UID_COUNT:
        raise IsolationError(
            f"refusing to run an app as uid {uid}: app uids are {UID_FIRST}..{UID_FIRST + UID_COUNT - 1}",
            hint="the app_uids table of tako.db was changed by hand; delete the row and redeploy the app",
        )
    return uid


def run_as(setpriv: str, uid: int, argv: list[str]) -> list[str]:
    """`argv` run as `uid`:`uid` with no supplementary groups and no capabilities at all, for good.

    A uid change from a non-zero uid keeps the permitted set, so every set is cleared explicitly; with no
    ambient or inheritable capabilities the exec leaves none, and no_new_privs keeps setuid and
    file-capability binaries from granting any back.
    """
    check_uid(uid)
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--no-new-privs",
        "--",
        *argv,
    ]


def app_env(app_dir: Path, app: str) -> dict[str, str]:
    """HOME, USER and LOGNAME for an isolated app (there is no passwd entry to take them from)."""
    return {"HOME": str(app_dir / "shared" / HOME_DIR), "USER": app, "LOGNAME": app}


def private_mode(mode: int, *, is_dir: bool) -> int:
    """The mode a release entry gets: the owner's bits, the group gets the owner's read/execute bits,
    others nothing (directories always rwx for the owner, so tako can unpack and prune them)."""
    owner = 0o700 if is_dir else mode & 0o700
    return owner | (owner >> 3) & 0o050


def check_release_path(app_dir: Path, release: Path) -> None:
    """A deploy names its release by path: it must be a release of this app, or tako-server would hand
    some other directory (certificates, another app) to this app's group."""
    releases = (app_dir / "releases").resolve()
    if release.resolve().parent != releases:
        raise IsolationError(
            f"release directory {release} is not in {releases}",
            hint="deploy with the tako CLI, which unpacks releases there",
        )


def _fix_tree(root: Path, gid: int, skip: frozenset[Path]) -> None:
    """Give every file and directory under `root` (symlinks not followed) group `gid` and its private mode."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            if path in skip:
                continue
            _fix_entry(path, gid)
    _fix_entry(root, gid)


def _fix_entry(path: Path, gid: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return  # a link's own owner and mode never matter; its target is fixed where it lives
    mode = private_mode(st.st_mode, is_dir=stat.S_ISDIR(st.st_mode))
    if st.st_gid != gid:
        os.chown(path, -1, gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def prepare(app_dir: Path, release: Path, uid: int) -> None:
    """Fence the app dir for `uid` and make `release` (and the virtualenv it links to) readable by it.

    Runs when a deploy is accepted, before any instance starts; cheap when nothing changed (a syscall
    per file only where the group or mode differs).
    """
    check_uid(uid)
    os.chown(app_dir, -1, uid)
    os.chmod(app_dir, 0o750)
    env_file = release / ".env"
    _fix_tree(release, uid, frozenset({env_file}))
    if env_file.exists() and not env_file.is_symlink():
        os.chmod(env_file, 0o600)
    venv = release / ".venv"
    if venv.is_symlink():
        target = venv.resolve()
        if target.parent == (app_dir / "shared" / "venvs").resolve() and target.is_dir():
            _fix_tree(target, uid, frozenset())
    shared = app_dir / "shared"
    shared.mkdir(exist_ok=True)
    home = shared / HOME_DIR
    with contextlib.suppress(FileExistsError):
        home.mkdir(mode=0o700)
    if not home.is_symlink():
        os.chown(home, uid, uid, follow_symlinks=False)
    data = shared / DATA_DIR
    if data.is_dir() and not data.is_symlink():
        _share_tree(data, uid)


def _share_tree(root: Path, gid: int) -> None:
    """`shared/data`: kept tako's, but group `gid` with the owner's bits (write included) makes it the
    app's to write, also what was there before isolation; setgid directories keep new files in the group."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            _share_entry(Path(dirpath, name), gid)
    _share_entry(root, gid)


def _share_entry(path: Path, gid: int) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
        return  # what the app made itself is already its own
    owner = stat.S_IMODE(st.st_mode) & 0o700
    mode = owner | owner >> 3 | (stat.S_ISGID if stat.S_ISDIR(st.st_mode) else 0)
    if st.st_gid != gid:
        os.chown(path, -1, gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def reclaim(app_dir: Path, uid: int) -> None:
    """Before the app dir is removed: give what the app created back to tako-server's user, so `rm -rf`
    by the deploy user can remove it all."""
    me = os.getuid()
    if me == uid or not app_dir.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(app_dir):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if st.st_uid == uid:
                    os.chown(path, me, -1, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        os.chmod(path, stat.S_IMODE(st.st_mode) | 0o700)
