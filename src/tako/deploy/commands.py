"""The remote commands of the per-server deploy pipeline, as values (see tako.remote.executor.sh).

Each function is pure; the scripts are constants and every variable reaches them as a positional
parameter, so nothing a user controls is ever spliced into shell text.
"""

from __future__ import annotations

from tako.deploy.layout import KEEP_RELEASES, AppLayout
from tako.remote.executor import Command, cmd, sh

LOCK_HELD_STATUS = 3

# $1 app dir, $2 lock dir, $3 holder line. Held: prints the holder, exits 3; taken: goes on, so a script
# can continue under the lock in the same round trip (see tako.deploy.releases.lock_and_list).
TAKE_LOCK = """
mkdir -p "$1" || exit 1
if ! mkdir "$2" 2>/dev/null; then
  cat "$2/holder" 2>/dev/null
  exit 3
fi
printf '%s\\n' "$3" > "$2/holder" || { rmdir "$2"; exit 1; }
"""

# Only removes the lock this deploy took (its holder line must match).
_RELEASE_LOCK = """
[ -d "$1" ] || exit 0
if [ "$(cat "$1/holder" 2>/dev/null)" = "$2" ]; then rm -rf "$1"; fi
"""

# Removes a lock only if it still names the same holder (an interrupted deploy of ours, see pipeline).
_BREAK_LOCK = """
[ -d "$1" ] || exit 0
if [ "$(cat "$1/holder" 2>/dev/null)" = "$2" ]; then rm -rf "$1"; else exit 3; fi
"""


_PREPARE_DIRS = """
set -e
mkdir -p "$1" "$2"
# Leftovers of interrupted deploys; safe to remove because we hold the lock.
for d in "$1"/.partial-* ; do [ -e "$d" ] && rm -rf "$d"; done
for d in "$1"/.replaced-* ; do
  [ -e "$d" ] || continue
  name=${d##*/.replaced-}; name=${name%-*}
  if [ -e "$1/$name" ]; then rm -rf "$d"; else mv "$d" "$1/$name"; fi
done
rm -f "$3"/.upload-*.tar.gz
mkdir "$4"
"""

# Extract with each member's mode as archived (--same-permissions: not narrowed or widened by the
# umask; the archive already gives others nothing), then refuse any symlink that resolves outside the
# release (tar itself refuses absolute member names and `..`).
_EXTRACT = """
set -e
tar -xzf "$1" -C "$2" --no-same-owner --same-permissions --delay-directory-restore
rm -f "$1"
root=$(cd "$2" && pwd -P)
find "$2" -type l | while IFS= read -r link; do
  target=$(readlink -f "$link" || true)
  case "$target" in
    "$root"|"$root"/*) ;;
    *) echo "archive member ${link#$2/} links outside the release ($target)" >&2; exit 4 ;;
  esac
done
"""

_WRITE_ENV = """
set -e
umask 077
cat > "$1/.env.tmp"
mv -f "$1/.env.tmp" "$1/.env"
"""

# Undo a deploy's staging ($1 staging, $2 release, $3 where an existing release of the same version was
# moved aside). releases/<version> is removed only if this deploy put it there (its marker names this
# staging dir): a redeploy of a version that already exists, interrupted before its promotion, must not
# take the existing (maybe live) release with it.
_ROLLBACK = """
rm -rf "$1"
if [ -e "$3" ]; then
  rm -rf "$2"
  mv "$3" "$2"
elif [ "$(cat "$2/.tako-staged-from" 2>/dev/null)" = "${1##*/}" ]; then
  rm -rf "$2"
fi
"""

# Before an atomic deploy switches back to the release of the same version it replaced ($1 staging, free
# again since the promotion; $2 release; $3 the replaced release): the replaced files go back in place and
# this deploy's go to the staging dir, where the cleanup removes them. Instances of this deploy keep
# running from the moved directory until tako-server has rolled back.
_RESTORE_REPLACED = """
set -e
[ -e "$3" ] || exit 0
mv "$2" "$1"
mv "$3" "$2"
"""

# When switching back failed, this deploy's release keeps serving: its files go (back) in place as
# releases/<version> ($1 staging, $2 release, $3 replaced) and the release it replaced is dropped.
_KEEP_DEPLOYED = """
if [ -e "$1" ]; then rm -rf "$2" && mv "$1" "$2"; fi
rm -rf "$3"
"""

# Disk space and whether tako-server is installed, in one round trip: the last line of `df -Pk`, then
# `installed` or `missing`.
_PREFLIGHT = """
df -Pk "$1" | tail -n 1
if command -v tako-server >/dev/null 2>&1; then echo installed; else echo missing; fi
"""

# The last steps of staging in one round trip: shared logs link, `.env` from stdin (0600), the routes and
# scaling it is deployed with ($5, see tako.deploy.releases.SETTINGS_FILE), then the staged directory
# becomes releases/<version> (an existing one of the same version is moved aside).
_FINISH_STAGING = """
set -e
rm -rf "$1/logs"
ln -s "$2" "$1/logs"
(umask 077; cat > "$1/.env.tmp")
mv -f "$1/.env.tmp" "$1/.env"
printf '%s\n' "$5" > "$1/.tako-settings.json"
printf '%s\n' "${1##*/}" > "$1/.tako-staged-from"
if [ -e "$3" ]; then mv "$3" "$4"; fi
mv "$1" "$3"
"""

_SWITCH_CURRENT = """
set -e
ln -sfn "releases/$2" "$1/.current-$3"
mv -T "$1/.current-$3" "$1/current"
"""

# Keep $2 releases: the current one and the $2 - 1 newest others; remove the rest and what redeploys
# replaced.
_PRUNE = """
cd "$1" || exit 0
current=$(readlink ../current 2>/dev/null); current=${current#releases/}
rm -rf .replaced-* 2>/dev/null
ls -1t | awk -v keep="$2" -v cur="$current" '$0 != cur { n++; if (n >= keep) print }' |
  while IFS= read -r old; do rm -rf -- "$old"; done
"""

# One round trip at the end of a deploy: switch `current` (must succeed), prune (best effort, in a
# subshell), release the lock. $1 app dir, $2 version, $3 nonce, $4 releases dir, $5 releases to keep,
# $6 lock dir, $7 holder line.
_FINALIZE = (
    _SWITCH_CURRENT + '\nset +e\n(\n  set -- "$4" "$5"\n' + _PRUNE + ')\nset -- "$6" "$7"\n' + _RELEASE_LOCK
)


def acquire_lock(layout: AppLayout, holder: str) -> Command:
    return sh(TAKE_LOCK, layout.app_dir, layout.lock, holder)


def release_lock(layout: AppLayout, holder: str) -> Command:
    return sh(_RELEASE_LOCK, layout.lock, holder)


def break_lock(layout: AppLayout, holder: str) -> Command:
    return sh(_BREAK_LOCK, layout.lock, holder)


def remove_upload(upload: str) -> Command:
    """Remove a (partial) uploaded archive after a failed deploy."""
    return cmd("rm", "-f", upload)


def remove_app_dir_if_empty(layout: AppLayout) -> Command:
    """After a failed first deploy the app dir holds nothing; `rmdir` refuses a non-empty one."""
    return sh('rmdir "$1" 2>/dev/null || true', layout.app_dir)


def preflight(root: str) -> Command:
    return sh(_PREFLIGHT, root)


def parse_preflight(output: str) -> tuple[int, bool]:
    """(available bytes, tako-server installed) from `preflight` output."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return parse_df_available(lines[-2]), lines[-1].strip() == "installed"


def finish_staging(layout: AppLayout, staging: str, release: str, replaced: str, settings: str) -> Command:
    """Reads the `.env` content on stdin, so values never appear in a command line; `settings` is the
    release's settings file (JSON: routes and scaling, nothing secret)."""
    return sh(_FINISH_STAGING, staging, layout.shared_logs, release, replaced, settings)


def finalize(
    layout: AppLayout,
    version: str,
    nonce: str,
    holder: str,
    keep: int = KEEP_RELEASES,
    *,
    unlock: bool = True,
) -> Command:
    """Switch `current`, prune old releases down to `keep` (the live one included; best effort) and, with
    `unlock`, release the lock, in one round trip. Exits non-zero only if `current` could not be switched
    (the lock is then left to the caller)."""
    lock = layout.lock if unlock else ""  # an empty lock path makes the unlock part a no-op
    return sh(_FINALIZE, layout.app_dir, version, nonce, layout.releases, str(keep), lock, holder)


def prepare_dirs(layout: AppLayout, staging: str) -> Command:
    return sh(_PREPARE_DIRS, layout.releases, layout.shared_logs, layout.app_dir, staging)


def extract(archive: str, staging: str) -> Command:
    return sh(_EXTRACT, archive, staging)


def write_env(release_dir: str) -> Command:
    """Reads the file's content on stdin, so values never appear in a command line."""
    return sh(_WRITE_ENV, release_dir)


def rollback(staging: str, release: str, replaced: str) -> Command:
    return sh(_ROLLBACK, staging, release, replaced)


def restore_replaced(staging: str, release: str, replaced: str) -> Command:
    return sh(_RESTORE_REPLACED, staging, release, replaced)


def keep_deployed(staging: str, release: str, replaced: str) -> Command:
    return sh(_KEEP_DEPLOYED, staging, release, replaced)


def parse_df_available(output: str) -> int:
    """Available bytes from `df -Pk` output (last line, 4th column)."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    fields = lines[-1].split()
    return int(fields[3]) * 1024
