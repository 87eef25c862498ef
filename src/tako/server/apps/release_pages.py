"""An app's own pages in its release: `maintenance.html` and `errors/502.html`, `503.html`, `504.html`.

Read once when the release is loaded (deploy, reload, restart), never per request. Each is bounded and
must be UTF-8 (served as `text/html; charset=utf-8`). Links are not followed: tako-server reads these
files with its own rights, and a page must come from the release, not from wherever a link points.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tako.errors import ReleaseError

# Bytes of one page. A page is sent whole from memory with every such answer; 64 KiB holds a styled page
# with inline CSS and a small inline image, larger assets belong on a CDN or in the app.
MAX_PAGE_BYTES = 64 * 1024
MAINTENANCE_PAGE = "maintenance.html"
ERRORS_DIR = "errors"
ERROR_STATUSES = (502, 503, 504)


@dataclass(frozen=True)
class ReleasePages:
    """The pages a release ships (absent ones are None / missing)."""

    maintenance: bytes | None = None
    errors: dict[int, bytes] = field(default_factory=dict)


NO_PAGES = ReleasePages()


def read_pages(release: Path) -> ReleasePages:
    """The release's pages; ReleaseError naming the file when one is unusable."""
    maintenance = _read(release, (MAINTENANCE_PAGE,))
    errors = {}
    for status in ERROR_STATUSES:
        found = _read(release, (ERRORS_DIR, f"{status}.html"))
        if found is not None:
            errors[status] = found
    if maintenance is None and not errors:
        return NO_PAGES
    return ReleasePages(maintenance=maintenance, errors=errors)


def _read(release: Path, parts: tuple[str, ...]) -> bytes | None:
    path = release.joinpath(*parts)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fds: list[int] = []
    try:
        fds.append(os.open(release, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for directory in parts[:-1]:
            fds.append(os.open(directory, flags | os.O_DIRECTORY, dir_fd=fds[-1]))
        fds.append(os.open(parts[-1], flags, dir_fd=fds[-1]))
        data = _read_regular(fds[-1], path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # `errors` is a file: it is not the pages directory
    except OSError as exc:
        raise ReleaseError(
            f"{path} cannot be read: {exc.strerror or exc}",
            hint="a page must be a regular file in the release (links are not followed)",
        ) from exc
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReleaseError(f"{path} is not UTF-8 text: {exc}", hint="save the page as UTF-8") from None
    return data


def _read_regular(fd: int, path: Path) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ReleaseError(f"{path} is not a regular file", hint="a page must be a plain HTML file")
    if info.st_size > MAX_PAGE_BYTES:
        raise ReleaseError(
            f"{path} is {info.st_size} bytes; a page may be at most {MAX_PAGE_BYTES} bytes (64 KiB)",
            hint="move large assets out of the page (link them from the app or a CDN)",
        )
    data = os.read(fd, MAX_PAGE_BYTES + 1)
    if len(data) > MAX_PAGE_BYTES:
        raise ReleaseError(f"{path} grew past {MAX_PAGE_BYTES} bytes while it was read")
    return data
