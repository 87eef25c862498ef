"""Whether the proxy's per-request modules run compiled, and the fall-back to their Python sources.

`wire`, `counters`, `cycle`, `client`, `upstream`, `access_line`, `static_files`, `static_stream`, the
transports `tls` and `plain`, and HTTP/2's `h2.stream` and `h2.connection` are plain Python; the `.pxd`
file next to each gives Cython C types for their attributes and internal calls.
setup.py compiles them where Cython and a C compiler are available and writes `compiled.json` beside them:
the hash of each module's .py and .pxd (and SHARED_DECLARATIONS) as built. Python imports an extension
module in preference to the .py next to it, so `select()` (run by the package before anything imports
those modules) makes sure a compiled module is only used if it was built from the current source;
otherwise, or with TAKO_PURE_PYTHON=1 in the environment, all are imported from source. They share C
types, so they are compiled or not together. See docs/proxy.md, "Compiled hot path".

This module is also loaded by setup.py (by path, standard library only) for `source_hash`.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = "tako.server.proxy"
# Names under PACKAGE; a dotted one is in a subpackage (`module_file`).
MODULES = (
    "wire",
    "counters",
    "cycle",
    "upstream",
    "client",
    "access_line",
    "static_files",
    "static_stream",
    "tls",
    "plain",
    "h2.stream",
    "h2.connection",
)
# Declarations compiled into the modules without being one: native.pxd's inline C functions (native.py is
# what runs where the modules do not). Part of every module's source hash.
SHARED_DECLARATIONS = ("native.pxd",)
MANIFEST = "compiled.json"
H2_BINDING = "h2._nghttp2"  # its key in the manifest; built from h2/_nghttp2.pyx
TLS_BINDING = "_libssl"  # the TLS transport's libssl calls, from _libssl.pyx (else tls.py calls _ssl)
HTTP1_BINDING = "_http1"  # client.py's request parser, from _http1.pyx (else http1_parser.py's, httptools)
ACCESS_BINDING = "_access_lines"  # access lines, from _access_lines.pyx (else access_line.LineFormatter)
# What each binding is built from, and what it is called in messages.
_BINDINGS = {
    H2_BINDING: ("h2/_nghttp2.pyx", "the HTTP/2 binding"),
    TLS_BINDING: ("_libssl.pyx", "the libssl binding"),
    HTTP1_BINDING: ("_http1.pyx", "the HTTP/1.1 parser binding"),
    ACCESS_BINDING: ("_access_lines.pyx", "the access line binding"),
}
BINDINGS = tuple(_BINDINGS)
# The compiled modules' declarations a binding calls through (its C calls follow their method tables): it
# is current only if built against these as they are.
_BINDING_DECLARATIONS = {HTTP1_BINDING: ("wire.pxd",)}
PURE_PYTHON_ENV = "TAKO_PURE_PYTHON"
REBUILD = "rebuild: python setup.py build_ext --inplace"

_DIRECTORY = Path(__file__).resolve().parent
_mode = "not selected yet"


def module_file(directory: Path, name: str, suffix: str) -> Path:
    """The file of module `name` of MODULES (`h2.stream`: h2/stream.py) with `suffix`, under `directory`."""
    return directory / (name.replace(".", "/") + suffix)


def source_hash(directory: Path, name: str) -> str:
    """The hash a compiled module is built from: its .py and .pxd files, and SHARED_DECLARATIONS."""
    digest = hashlib.sha256()
    for suffix in (".py", ".pxd"):
        digest.update(module_file(directory, name, suffix).read_bytes())
    for shared in SHARED_DECLARATIONS:
        digest.update((directory / shared).read_bytes())
    return digest.hexdigest()


def binding_hash(directory: Path, name: str = H2_BINDING) -> str:
    """The hash a binding (`H2_BINDING`, `TLS_BINDING`) is built from: its .pyx, and the declarations of
    compiled modules it calls through."""
    digest = hashlib.sha256((directory / _BINDINGS[name][0]).read_bytes())
    for declarations in _BINDING_DECLARATIONS.get(name, ()):
        digest.update((directory / declarations).read_bytes())
    return digest.hexdigest()


def binding_problem(name: str = H2_BINDING) -> str | None:
    """Why the built binding `name` must not be loaded (built from another source), or None."""
    try:
        built = json.loads((_DIRECTORY / MANIFEST).read_text()).get(name)
    except (OSError, ValueError):
        built = None
    try:
        current = binding_hash(_DIRECTORY, name)
    except OSError:  # an installation without the .pyx: the wheel's own binary, nothing to compare
        return None
    if built != current:
        # A development checkout edited after its build: the old binary would run silently.
        source, what = _BINDINGS[name]
        sources = " or ".join((Path(source).name, *_BINDING_DECLARATIONS.get(name, ())))
        return f"{what} was compiled from an older {sources}; {REBUILD}"
    return None


def mode() -> str:
    """`compiled`, or `python (<why>)`: for the server's start-up log and the benchmarks."""
    return _mode


def select() -> None:
    """Import `MODULES` from source unless their compiled versions are present and current."""
    global _mode
    reason = _reason_for_source()
    if reason is None:
        _mode = "compiled"
        return
    _mode = f"python ({reason})"
    if not any(_extension(name) for name in MODULES):
        return  # nothing compiled here: the normal import finds the sources
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def _reason_for_source() -> str | None:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return f"{PURE_PYTHON_ENV} is set"
    built = [name for name in MODULES if _extension(name)]
    if not built:
        return "not compiled"
    if len(built) < len(MODULES):
        return "only " + ", ".join(built) + " compiled"
    try:
        manifest = json.loads((_DIRECTORY / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"{MANIFEST} is missing or unreadable"
    try:
        stale = [name for name in MODULES if manifest.get(name) != source_hash(_DIRECTORY, name)]
    except OSError as exc:  # an installation without the .pxd files
        return f"cannot hash the sources: {exc}"
    if stale:
        # A source edited after the build (a development checkout): never run the old code.
        stale_names = ", ".join(stale)
        return f"compiled from older sources of {stale_names}; {REBUILD}"
    return None


def _extension(name: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = module_file(_DIRECTORY, name, suffix)
        if path.exists():
            return path
    return None


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the .py file of each compiled module, ahead of the path finder that prefers the extension."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        name = fullname.removeprefix(f"{PACKAGE}.")
        if name == fullname or name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, module_file(_DIRECTORY, name, ".py"))
