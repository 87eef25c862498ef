"""The proxy's per-request modules run compiled when built from the current sources, else from source.

scripts/test builds them in place before the suite runs (and runs the proxy tests again with
TAKO_PURE_PYTHON=1); these tests check the choice itself, in fresh interpreters. Those that need the build
are skipped on a checkout without a current one, except where REQUIRE_BUILD_ENV is set (scripts/test sets
it), so a failed build there fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import tako
from tako.server.proxy import client, compiled, upstream

SRC = Path(tako.__file__).resolve().parent.parent
PROXY = SRC / "tako" / "server" / "proxy"
BUILD_COMMAND = ".venv/bin/python setup.py build_ext --inplace"
REQUIRE_BUILD_ENV = "TAKO_TEST_REQUIRE_COMPILED"

_PROBE = (
    "import importlib, json, sys, tako.server.proxy as p;"
    "files = [importlib.import_module(f'{p.compiled.PACKAGE}.{m}').__file__ for m in sys.argv[1:]];"
    "print(json.dumps([p.compiled.mode(), *files]))"
)
# The HTTP/2 modules import the libnghttp2 binding: without it built they are never imported, so not probed.
_H2_BINDING_BUILT = any((PROXY / "h2" / f"_nghttp2{suffix}").exists() for suffix in EXTENSION_SUFFIXES)
PROBED = tuple(name for name in compiled.MODULES if _H2_BINDING_BUILT or not name.startswith("h2."))
SOURCES = tuple(compiled.module_file(PROXY, name, ".py").name for name in PROBED)


def _probe(src: Path, **env: str) -> tuple[str, tuple[str, ...]]:
    """Import the proxy from `src` in a new interpreter: its mode and the files its compiled-or-not
    modules (`PROBED`) came from."""
    environ = {k: v for k, v in os.environ.items() if k != compiled.PURE_PYTHON_ENV}
    environ.update(env, PYTHONPATH=str(src))
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *PROBED],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    mode, *files = json.loads(proc.stdout)
    return mode, tuple(Path(file).name for file in files)


def _built_in_place() -> bool:
    """All the modules compiled here, from the sources as they are now (what `compiled.select` trusts)."""
    try:
        manifest = json.loads((PROXY / compiled.MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    every_module = all(
        any(compiled.module_file(PROXY, name, suffix).exists() for suffix in EXTENSION_SUFFIXES)
        for name in compiled.MODULES
    )
    return every_module and _modules_of(manifest) == _current_hashes()


def _current_hashes() -> dict[str, str]:
    return {name: compiled.source_hash(PROXY, name) for name in compiled.MODULES}


def _modules_of(manifest: dict[str, str]) -> dict[str, str]:
    """The manifest's entries for the shared-type modules (it also has the bindings')."""
    return {name: digest for name, digest in manifest.items() if name not in compiled.BINDINGS}


def _needs_build() -> None:
    """Skip the calling test without a current in-place build, or fail it where the build is required."""
    if _built_in_place():
        return
    problem = f"the proxy modules are not built in place from the current sources; run `{BUILD_COMMAND}`"
    if os.environ.get(REQUIRE_BUILD_ENV):
        pytest.fail(f"{problem} ({REQUIRE_BUILD_ENV} is set: the build was meant to have run)")
    pytest.skip(problem)


def _extension_suffix() -> str:
    return Path(client.__file__ or "").name.removeprefix("client")


def test_this_checkout_runs_the_modules_it_was_told_to() -> None:
    if os.environ.get(compiled.PURE_PYTHON_ENV):
        assert compiled.mode() == f"python ({compiled.PURE_PYTHON_ENV} is set)"
        assert Path(client.__file__ or "").name == "client.py"
        assert Path(upstream.__file__ or "").name == "upstream.py"
        return
    # Without the variable a current build must run: the benchmarks and servers run it.
    _needs_build()
    assert compiled.mode() == "compiled", "build the proxy modules: python setup.py build_ext --inplace"
    assert _extension_suffix().endswith(".so")
    assert Path(upstream.__file__ or "").name == f"upstream{_extension_suffix()}"
    manifest = json.loads((PROXY / compiled.MANIFEST).read_text())
    assert _modules_of(manifest) == _current_hashes()


def test_pure_python_on_request() -> None:
    assert _probe(SRC, TAKO_PURE_PYTHON="1") == ("python (TAKO_PURE_PYTHON is set)", SOURCES)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("client", "client.py"),
        ("tls", "tls.pxd"),
        ("h2.stream", "h2/stream.pxd"),
        (", ".join(compiled.MODULES), "native.pxd"),  # compiled into the modules (native.py)
    ],
)
def test_a_build_older_than_its_source_is_not_used(tmp_path: Path, module: str, source: str) -> None:
    _needs_build()
    # A checkout edited after its in-place build (a .py or its .pxd): the old compiled code must not run, for
    # any of the modules (they share C types, so all come from source).
    copy = tmp_path / "src"
    shutil.copytree(SRC / "tako", copy / "tako", ignore=shutil.ignore_patterns("__pycache__"))
    assert _probe(copy)[0] == "compiled"
    with (copy / "tako" / "server" / "proxy" / source).open("a") as fh:
        fh.write("# edited\n")
    mode, files = _probe(copy)
    assert mode.startswith(f"python (compiled from older sources of {module};")
    assert "build_ext --inplace" in mode
    assert files == SOURCES


def test_without_a_manifest_the_build_is_not_trusted(tmp_path: Path) -> None:
    _needs_build()
    copy = tmp_path / "src"
    shutil.copytree(SRC / "tako", copy / "tako", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "tako" / "server" / "proxy" / compiled.MANIFEST).unlink()
    mode, files = _probe(copy)
    assert mode == f"python ({compiled.MANIFEST} is missing or unreadable)"
    assert files == SOURCES


def test_an_installation_without_the_pxd_files_runs_the_sources(tmp_path: Path) -> None:
    _needs_build()
    copy = tmp_path / "src"
    shutil.copytree(SRC / "tako", copy / "tako", ignore=shutil.ignore_patterns("__pycache__", "*.pxd"))
    mode, files = _probe(copy)
    assert mode.startswith("python (cannot hash the sources: ")
    assert files == SOURCES


def test_a_none_where_an_object_belongs_raises_instead_of_crashing() -> None:
    # Compiled attribute access on None must raise AttributeError as Python does (setup.py: nonecheck),
    # not crash the process with every connection in it. In a child process, so a crash is a failure.
    code = (
        "import asyncio, tako.server.proxy as p\n"
        "from tako.server.proxy.upstream import UpstreamConnection, UpstreamPool\n"
        "conn = UpstreamConnection(UpstreamPool('app/1', '127.0.0.1', 8000, asyncio.new_event_loop()))\n"
        "try:\n"
        "    conn._finish_response(None)\n"
        "except AttributeError as exc:\n"
        "    print(p.compiled.mode(), '|', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The first attribute read of the missing cycle, exactly as in Python (unchecked, compiled code reads
    # past the None object instead and fails later, if at all).
    assert proc.stdout.strip() == f"{compiled.mode()} | 'NoneType' object has no attribute 'conn'"


_H2_PROBE = "import tako.server.proxy.h2 as h2; print(h2.available(), '|', h2.unavailable_reason())"


def test_an_http2_binding_older_than_its_source_is_not_used(tmp_path: Path) -> None:
    # The libnghttp2 binding has no Python fall-back: built from an older _nghttp2.pyx, HTTP/2 is not
    # offered (clients get HTTP/1.1) rather than the old binary run silently.
    _needs_build()
    if not any((PROXY / "h2" / f"_nghttp2{suffix}").exists() for suffix in EXTENSION_SUFFIXES):
        pytest.skip(f"the libnghttp2 binding is not built; run `{BUILD_COMMAND}` with libnghttp2-dev")
    probe = _probe_in_a_copy(tmp_path, _H2_PROBE)
    assert probe().strip() == "True | None"
    with (tmp_path / "src" / "tako" / "server" / "proxy" / "h2" / "_nghttp2.pyx").open("a") as fh:
        fh.write("# edited\n")
    answer = probe()
    assert answer.startswith("False | the HTTP/2 binding was compiled from an older _nghttp2.pyx;"), answer
    assert "build_ext --inplace" in answer


def _probe_in_a_copy(tmp_path: Path, code: str) -> Callable[[], str]:
    """A copy of the built package in tmp_path/src, and a function that runs `code` against it."""
    copy = tmp_path / "src"
    shutil.copytree(SRC / "tako", copy / "tako", ignore=shutil.ignore_patterns("__pycache__"))
    environ = {k: v for k, v in os.environ.items() if k != compiled.PURE_PYTHON_ENV}
    environ["PYTHONPATH"] = str(copy)

    def probe() -> str:
        argv = [sys.executable, "-c", code]
        proc = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60, check=True)
        return proc.stdout

    return probe


def _loaded_then_stale(tmp_path: Path, binding: str, code: str) -> tuple[str, str]:
    """What `code` prints against a built copy, then against it once `binding`'s .pyx is edited."""
    probe = _probe_in_a_copy(tmp_path, code)
    current = probe().strip()
    with (tmp_path / "src" / "tako" / "server" / "proxy" / f"{binding}.pyx").open("a") as fh:
        fh.write("# edited\n")
    return current, probe().strip()


def test_the_tls_transport_uses_libssl_only_when_its_binding_is_current(tmp_path: Path) -> None:
    # Where the binding is stale the transport calls the _ssl module's methods (same behaviour).
    _needs_build()
    if not any((PROXY / f"_libssl{suffix}").exists() for suffix in EXTENSION_SUFFIXES):
        pytest.skip(f"the libssl binding is not built; run `{BUILD_COMMAND}` with libssl-dev")
    code = "import tako.server.proxy.tls as t; print(t._make_channel is not None)"
    assert _loaded_then_stale(tmp_path, compiled.TLS_BINDING, code) == ("True", "False")


def test_the_connections_parse_in_c_only_when_the_parser_binding_is_current(tmp_path: Path) -> None:
    # Where the binding is stale both connections parse with httptools (http1_parser.py; same behaviour).
    _needs_build()
    code = (
        "import tako.server.proxy.compiled as c; c.select()\n"
        "import tako.server.proxy.client as cl, tako.server.proxy.upstream as up\n"
        "print(cl._RequestParser.__module__, up._ResponseParser.__module__)"
    )
    assert _loaded_then_stale(tmp_path, compiled.HTTP1_BINDING, code) == (
        "tako.server.proxy._http1 tako.server.proxy._http1",
        "tako.server.proxy.http1_parser tako.server.proxy.http1_parser",
    )


def test_the_parser_binding_runs_only_with_the_compiled_modules_it_calls(tmp_path: Path) -> None:
    # The binding calls the connections through wire.pxd's method tables: built against other ones (wire.pxd
    # edited), or with the modules running from source (client.py edited), it is not used.
    _needs_build()
    code = (
        "import tako.server.proxy.compiled as c; c.select()\n"
        "import tako.server.proxy.client as cl\n"
        "print(c.mode() == 'compiled', cl._RequestParser.__module__)"
    )
    probe = _probe_in_a_copy(tmp_path, code)
    assert probe().strip() == "True tako.server.proxy._http1"
    proxy = tmp_path / "src" / "tako" / "server" / "proxy"
    client = proxy / "client.py"
    original = client.read_bytes()
    client.write_bytes(original + b"# edited\n")
    assert probe().strip() == "False tako.server.proxy.http1_parser"
    client.write_bytes(original)
    with (proxy / "wire.pxd").open("a") as fh:
        fh.write("# edited\n")
    assert probe().strip() == "False tako.server.proxy.http1_parser"
    problem = "import tako.server.proxy.compiled as c; print(c.binding_problem(c.HTTP1_BINDING))"
    stale = _probe_in_a_copy(tmp_path / "again", problem)
    assert stale().strip() == "None"
    with (tmp_path / "again" / "src" / "tako" / "server" / "proxy" / "wire.pxd").open("a") as fh:
        fh.write("# edited\n")
    assert stale().startswith(
        "the HTTP/1.1 parser binding was compiled from an older _http1.pyx or wire.pxd; rebuild"
    )


def test_access_lines_are_formatted_in_c_only_when_their_binding_is_current(tmp_path: Path) -> None:
    # Where the binding is stale access_line.py's LineFormatter makes the lines (the same bytes).
    _needs_build()
    code = "import tako.server.proxy.access_line as a; print(type(a.line_formatter(False)).__module__)"
    assert _loaded_then_stale(tmp_path, compiled.ACCESS_BINDING, code) == (
        "tako.server.proxy._access_lines",
        "tako.server.proxy.access_line",
    )
