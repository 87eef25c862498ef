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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tako.errors import IsolationError

# 200000-299999: far above the uids of accounts (useradd stops at 60000) and past the subordinate range
# useradd gives the first user (100000-165535, for user namespaces). A second user with subordinate ids
# would overlap it: docs/server.md says to check /etc/subuid.
UID_FIRST = 200_000
UID_COUNT = 100_000

# Capability bits (linux/capability.h) tako-server must hold in its effective set.
REQUIRED_CAPS = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7}
SETPRIV_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
HOME_DIR = "home"  # under <app>/shared: the app's HOME, the one directory of the app dir it may write
DATA_DIR = "data"  # under <app>/shared: TAKO_DATA_DIR, made at deploy; the app's group may write it


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
            f"tako-server lacks {', '.join(missing)}; start it with install-server's systemd unit, or "
            "with tako-server-service run as root, which grant them",
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


Visit = Callable[[str, os.stat_result], None]


def _walk(root: Path, visit: Visit, skip_top: frozenset[str] = frozenset()) -> None:
    """Call `visit(path, st)` for `root` and every file and directory under it; `path` names the entry
    through an O_PATH descriptor (/proc/self/fd/N), so changes reach exactly the inode that was checked.

    Symlinks are never followed nor visited, and an app that swaps an entry of a directory it can write
    (its HOME, shared/data) for a symlink meanwhile gains nothing: os.fwalk checks each directory it
    enters, and each entry is opened O_NOFOLLOW before it is looked at. `visit` runs on a directory
    before the walk enters it, so it may make it enterable. `skip_top`: names at the top left alone.
    """
    _visit_at(None, str(root), visit)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        top = dirpath == str(root)
        for name in (*dirnames, *filenames):
            if not (top and name in skip_top):
                _visit_at(dirfd, name, visit)


def _visit_at(dirfd: int | None, name: str, visit: Visit) -> None:
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dirfd)
    except OSError:
        return  # gone meanwhile
    try:
        st = os.fstat(fd)
        if not stat.S_ISLNK(st.st_mode):  # a link's own owner and mode never matter
            visit(f"/proc/self/fd/{fd}", st)
    finally:
        os.close(fd)


def _private(gid: int) -> Visit:
    """Release files: group `gid`, the group gets the owner's read/execute bits, others nothing."""

    def visit(path: str, st: os.stat_result) -> None:
        mode = private_mode(st.st_mode, is_dir=stat.S_ISDIR(st.st_mode))
        if st.st_gid != gid:
            os.chown(path, -1, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)

    return visit


def _shared(gid: int) -> Visit:
    """`shared/data`: kept tako's, but group `gid` with the owner's bits (write included) makes it the
    app's to write, also what was there before isolation; setgid directories keep new files in the group."""
    me = os.getuid()

    def visit(path: str, st: os.stat_result) -> None:
        if st.st_uid != me:
            return  # what the app made itself is already its own
        owner = stat.S_IMODE(st.st_mode) & 0o700
        mode = owner | owner >> 3 | (stat.S_ISGID if stat.S_ISDIR(st.st_mode) else 0)
        if st.st_gid != gid:
            os.chown(path, -1, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)

    return visit


def _reclaimed(uid: int) -> Visit:
    me = os.getuid()

    def visit(path: str, st: os.stat_result) -> None:
        if st.st_uid == uid:
            with contextlib.suppress(OSError):  # best effort: the removal that follows reports what is left
                os.chown(path, me, -1)
                if stat.S_ISDIR(st.st_mode):
                    os.chmod(path, stat.S_IMODE(st.st_mode) | 0o700)

    return visit


def prepare(app_dir: Path, release: Path, uid: int) -> None:
    """Fence the app dir for `uid` and make `release` (and the virtualenv it links to) readable by it.

    Runs when a deploy is accepted, before any instance starts; cheap when nothing changed (a syscall
    per file only where the group or mode differs).
    """
    check_uid(uid)
    os.chown(app_dir, -1, uid)
    os.chmod(app_dir, 0o750)
    env_file = release / ".env"
    _walk(release, _private(uid), skip_top=frozenset({env_file.name}))
    if env_file.exists() and not env_file.is_symlink():
        os.chmod(env_file, 0o600)
    venv = release / ".venv"
    if venv.is_symlink():
        target = venv.resolve()
        if target.parent == (app_dir / "shared" / "venvs").resolve() and target.is_dir():
            _walk(target, _private(uid))
    shared = app_dir / "shared"
    shared.mkdir(exist_ok=True)
    home = shared / HOME_DIR
    with contextlib.suppress(FileExistsError):
        home.mkdir(mode=0o700)
    if not home.is_symlink():
        os.chown(home, uid, uid, follow_symlinks=False)
    data = shared / DATA_DIR
    if data.is_dir() and not data.is_symlink():
        _walk(data, _shared(uid))


def reclaim(app_dir: Path, uid: int) -> None:
    """Before the app dir is removed: give what the app created back to tako-server's user, so `rm -rf`
    by the deploy user can remove it all."""
    if os.getuid() == uid or not app_dir.is_dir():
        return
    _walk(app_dir, _reclaimed(uid))
