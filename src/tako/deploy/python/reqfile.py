"""Reading requirements-file text the way pip does: logical lines, comments, package names (PEP 503),
local-path requirements, includes, hash and package-source options."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

_NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")
_INCLUDE_RE = re.compile(r"^\s*(-r|-c|--requirement|--constraint)[\s=]+(\S+)")
_SOURCE_OPTION = re.compile(
    r"^\s*(-i|--index-url|--extra-index-url|--no-index|-f|--find-links|--trusted-host|--pre|--prefer-binary)"
    r"(?=[\s=]|$)"
)


def canonical_name(name: str) -> str:
    """A package name normalised as PEP 503 says: runs of `-`, `_` and `.` become one `-`, lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def logical_lines(text: str) -> Iterator[str]:
    """Requirements-file lines with backslash continuations joined."""
    buf = ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        yield buf + raw
        buf = ""
    if buf:
        yield buf


def strip_comment(line: str) -> str:
    return re.sub(r"(^|\s)#.*$", "", line).strip()


def has_requirements(text: str) -> bool:
    """False for a file of only comments and blank lines."""
    return any(strip_comment(line) for line in logical_lines(text))


def is_hashed(text: str) -> bool:
    """True when pip must run in --require-hashes mode (any line carries a hash)."""
    return any("--hash" in line for line in logical_lines(text))


def _is_local_path(spec: str) -> bool:
    """A requirement naming a local directory or file (`./sdk`, `../x`, `/abs`, `.`, `file:...`)."""
    return (
        spec in (".", "..")
        or spec.startswith(("./", "../", "/", "file:"))
        or bool(re.match(r"^[A-Za-z0-9._-]+\s*@\s*file:", spec))
    )


def _local_path(spec: str, base_dir: Path) -> Path:
    if "@" in spec and not spec.startswith(("./", "../", "/")):
        spec = spec.split("@", 1)[1].strip()
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    elif spec.startswith("file:"):
        spec = spec[len("file:") :]
    spec = re.split(r"\s*;", spec, maxsplit=1)[0].strip()
    return (base_dir / spec).resolve()


def local_requirements(text: str, base_dir: Path) -> list[tuple[str, Path]]:
    """(original line, resolved path) for every local-path requirement in the top-level file."""
    found = []
    for line in logical_lines(text):
        spec = strip_comment(line)
        if spec.startswith(("-e ", "--editable ", "--editable=")):
            spec = re.sub(r"^(-e|--editable)[\s=]+", "", spec)
        if spec and not spec.startswith("-") and _is_local_path(spec):
            found.append((line, _local_path(spec, base_dir)))
    return found


def included_files(text: str, base_dir: Path) -> list[Path]:
    """The files a requirements text includes with `-r`/`-c`, resolved against `base_dir`."""
    out = []
    for line in logical_lines(text):
        m = _INCLUDE_RE.match(line)
        if m:
            out.append((base_dir / m.group(2)).resolve())
    return out


def absolutize_includes(text: str, base: Path) -> str:
    """Make `-r`/`-c` paths absolute so the rewritten file can live elsewhere."""

    def fix(m: re.Match[str]) -> str:
        return f"{m.group(1)} {(base / m.group(2)).resolve()}"

    return "\n".join(_INCLUDE_RE.sub(fix, line) for line in logical_lines(text)) + "\n"


def hash_options(text: str) -> dict[str, list[str]]:
    """Per canonical package name, the `--hash=...` options given for it in a requirements file."""
    out: dict[str, list[str]] = {}
    for line in logical_lines(text):
        spec = strip_comment(line)
        m = _NAME_RE.match(spec)
        if not m or "--hash" not in spec:
            continue
        out[canonical_name(m.group(1))] = re.findall(r"--hash[=\s]+\S+", spec)
    return out


def source_options(text: str) -> list[str]:
    """The requirements file's lines that say where packages come from (indexes, find-links)."""
    return [strip_comment(line) for line in logical_lines(text) if _SOURCE_OPTION.match(line)]
