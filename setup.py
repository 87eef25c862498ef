"""Compile the proxy's per-request modules with Cython where possible; pure Python everywhere else.

All metadata is in pyproject.toml. This file only adds the modules of `compiled.MODULES` (`counters`, `cycle`,
`client`, `upstream`, ... of tako.server.proxy, `h2.connection` in its subpackage) as optional extension
modules (their .pxd files give the C types; see src/tako/server/proxy/compiled.py): without Cython or a C
compiler, or with TAKO_PURE_PYTHON=1, the package is pure Python and works the same. Next to the built
modules it writes compiled.json, the source hashes they were built from, so that a compiled module is never
used with newer sources (a development checkout built in place with `python setup.py build_ext --inplace`,
as scripts/test does).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PROXY = ROOT / "src" / "tako" / "server" / "proxy"


def _compiled_module() -> object:
    """src/tako/server/proxy/compiled.py, loaded by path: importing the package needs its dependencies."""
    spec = importlib.util.spec_from_file_location("_tako_compiled", PROXY / "compiled.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compiled = _compiled_module()

# No debug information: the extensions ship without symbols (a third of their size), and generating it for
# Cython's large C files was a third of the build's time (58 s against 39-41 s on two cores, the same
# optimisation; the testbed's wheel and `tako servers upgrade` build them again). -g0 comes after Python's
# own -g.
_NO_DEBUG_INFO: dict[str, list[str]] = {"extra_compile_args": ["-g0"], "extra_link_args": ["-s"]}


def _libc_binding(name: str) -> Extension:
    """A binding of compiled.BINDINGS built from its .pyx alone (it needs only libc)."""
    return Extension(
        f"{compiled.PACKAGE}.{name}",
        [str((PROXY / f"{name}.pyx").relative_to(ROOT))],
        optional=True,
        **_NO_DEBUG_INFO,
    )


def extensions() -> list[Extension]:
    if os.environ.get(compiled.PURE_PYTHON_ENV, "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("tako: Cython is not installed; the proxy stays pure Python")
        return []
    modules = [
        Extension(
            f"{compiled.PACKAGE}.{name}",
            [str(compiled.module_file(PROXY, name, ".py").relative_to(ROOT))],
            optional=True,
            **_NO_DEBUG_INFO,
        )
        for name in compiled.MODULES
    ]
    # HTTP/2 on the HTTPS listener: a binding to the system's libnghttp2 (Debian: libnghttp2-dev to build,
    # libnghttp2-14 to run). Without it tako-server offers only HTTP/1.1 (docs/proxy.md, "HTTP/2").
    modules.append(
        Extension(
            f"{compiled.PACKAGE}.h2._nghttp2",
            [str((PROXY / "h2" / "_nghttp2.pyx").relative_to(ROOT))],
            libraries=["nghttp2"],
            optional=True,
            **_NO_DEBUG_INFO,
        )
    )
    # The TLS transport's record I/O on the connection's own SSL object: the system's libssl, the one
    # Python's _ssl module is linked to (Debian: libssl-dev to build). Without it tls.py calls _ssl.
    modules.append(
        Extension(
            f"{compiled.PACKAGE}.{compiled.TLS_BINDING}",
            [str((PROXY / f"{compiled.TLS_BINDING}.pyx").relative_to(ROOT))],
            libraries=["ssl", "crypto"],
            optional=True,
            **_NO_DEBUG_INFO,
        )
    )
    # The HTTP/1.1 parsers: llhttp (the version httptools bundles, vendored in src/vendor/llhttp/, outside the
    # package) with their callbacks in C. Without it the proxy parses with httptools (http1_parser.py).
    llhttp = ROOT / "src" / "vendor" / "llhttp"
    modules.append(
        Extension(
            f"{compiled.PACKAGE}.{compiled.HTTP1_BINDING}",
            [
                str((PROXY / f"{compiled.HTTP1_BINDING}.pyx").relative_to(ROOT)),
                *(str((llhttp / name).relative_to(ROOT)) for name in ("llhttp.c", "api.c", "http.c")),
            ],
            include_dirs=[str(llhttp.relative_to(ROOT))],
            depends=[str((llhttp / "llhttp.h").relative_to(ROOT))],
            optional=True,
            **_NO_DEBUG_INFO,
        )
    )
    # Access lines formatted into C buffers (libc only). Without it access_line.py's formatter makes them.
    modules.append(_libc_binding(compiled.ACCESS_BINDING))
    return cythonize(
        modules,
        build_dir="build/cython",  # the generated C stays out of src/ (and out of the wheel)
        quiet=True,
        nthreads=os.cpu_count() or 1,  # Cython's translation to C, one module per core
        compiler_directives={
            "language_level": 3,
            # Only the .pxd files type anything: the annotations are written for mypy.
            "annotation_typing": False,
            # A None where the .pxd promises an object raises AttributeError, as in Python, instead of
            # crashing the whole server (no measurable cost in bench/proxy/hotpath.py).
            "nonecheck": True,
        },
        # Cython rebuilds when a .py or .pxd changes, not when these directives do: after changing them,
        # remove build/cython once.
    )


class BuildExt(build_ext):
    """build_ext that records the source hashes of what it built (compiled.json, next to the modules),
    the HTTP/2 binding's too: one built from an older .pyx is not loaded either; and compiles the modules
    on every core unless told otherwise (`-j`), as `tako servers upgrade` builds a wheel on the user's
    machine while they wait."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        super().run()
        built = {}
        for ext in self.extensions:
            name = ext.name.removeprefix(f"{compiled.PACKAGE}.")
            if not Path(self.get_ext_fullpath(ext.name)).exists():
                continue
            if name in compiled.MODULES:
                built[name] = compiled.source_hash(PROXY, name)
            elif name in compiled.BINDINGS:
                built[name] = compiled.binding_hash(PROXY, name)
        if built:
            manifest_dir = Path(self.get_ext_fullpath(f"{compiled.PACKAGE}.{compiled.MODULES[0]}")).parent
            manifest_dir.mkdir(parents=True, exist_ok=True)
            (manifest_dir / compiled.MANIFEST).write_text(json.dumps(built, indent=1, sort_keys=True) + "\n")


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
