"""`[tako] static`: URL prefixes tako-server serves from directories of the release, and the rules both
tako.toml (on the developer's machine) and tako-server (at deploy) check them by."""

from __future__ import annotations

import re

EXAMPLE = 'static = { "/static" = "public" }'
# Prefixes are plain URL path segments: what a client sends without percent-encoding.
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+\Z")


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot be a static URL prefix, or None when it can."""
    if prefix == "/" or not prefix:
        return "the URL prefix must name a path below '/' (the app would never see a request)"
    if not _PREFIX.match(prefix.rstrip("/") if len(prefix) > 1 else prefix):
        return (
            f"the URL prefix {prefix!r} must start with '/' and be path segments of letters, digits and "
            "-._~!$&'()*+,;=:@ (no '//', spaces, '%', '?' or '#')"
        )
    if any(part in (".", "..") for part in prefix.split("/")):
        return f"the URL prefix {prefix!r} must not contain '.' or '..' segments"
    return None


def directory_problem(directory: str) -> str | None:
    """Why `directory` cannot be a static directory (relative, inside the project), or None."""
    if not directory or directory.strip() != directory:
        return "the directory must be a non-empty relative path without surrounding spaces"
    if directory.startswith("/") or "\\" in directory or "\x00" in directory:
        return f"the directory {directory!r} must be relative to the project (no leading '/', no '\\')"
    if any(part == ".." for part in directory.split("/")):
        return f"the directory {directory!r} must stay inside the project (no '..')"
    return None
