"""Framework detection for `tako init`: find a FastAPI, Starlette, Flask or Django app in a project and the
production start command that serves it on 127.0.0.1:$PORT (uvicorn for ASGI, gunicorn for WSGI).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

# Both servers finish in-flight requests on SIGTERM; the timeouts bound that below tako-server's grace.
UVICORN = "uvicorn {target} --host 127.0.0.1 --port $PORT"
GUNICORN = "gunicorn {target} --bind 127.0.0.1:$PORT --workers 2 --graceful-timeout 20"
DJANGO_RELEASE = "python manage.py migrate"
TODO_COMMENT = (
    "TODO: no FastAPI, Starlette, Flask or Django app found: set `start` to the command that runs one\n"
    "instance of your app listening on 127.0.0.1:$PORT."
)

# Entry files searched, in order; packages named like the project are searched too (see _candidates).
_ENTRY_FILES = ("main.py", "app.py", "server.py", "api.py", "asgi.py", "wsgi.py", "application.py")
_ENTRY_DIRS = ("", "app", "src", "api")
_SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    ".tako",
    "tests",
    "test",
    "build",
    "dist",
}


@dataclass(frozen=True)
class Detection:
    framework: str | None  # "fastapi", "starlette", "flask", "django" or None
    start: str | None  # the start command, None when nothing was found
    comment: str  # one or two lines for tako.toml explaining the choice (or what to do)
    release: str | None = None  # a release command (Django: apply migrations), None: none suggested


@dataclass(frozen=True)
class _Framework:
    key: str
    label: str
    package: str  # the distribution name in requirements
    constructor: str  # `app = <constructor>(`
    server: str  # uvicorn / gunicorn
    template: str


_FRAMEWORKS = (
    _Framework("fastapi", "FastAPI", "fastapi", "FastAPI", "uvicorn", UVICORN),
    _Framework("starlette", "Starlette", "starlette", "Starlette", "uvicorn", UVICORN),
    _Framework("flask", "Flask", "flask", "Flask", "gunicorn", GUNICORN),
)


def detect_framework(project_dir: Path) -> Detection:
    """Look at dependencies and common entry files; never raises on odd projects, falls back to a TODO."""
    if not project_dir.is_dir():
        return Detection(None, None, TODO_COMMENT)
    deps = _dependency_names(project_dir)
    django = _detect_django(project_dir, deps)
    if django is not None:
        return django
    for fw in _FRAMEWORKS:
        found = _find_app(project_dir, fw)
        if found is None and fw.package not in deps:
            continue
        server_note = "" if fw.server in deps or not deps else f"; add `{fw.server}` to your requirements"
        shutdown = (
            "On SIGTERM uvicorn stops accepting and lets in-flight requests finish"
            if fw.server == "uvicorn"
            else "On SIGTERM gunicorn lets workers finish in-flight requests (up to --graceful-timeout s)"
        )
        if found is None:
            target = "main:app"
            return Detection(
                fw.key,
                fw.template.format(target=target),
                f"{fw.label} is a dependency but no `app = {fw.constructor}(...)` was found.\n"
                f"TODO: replace `{target}` with your module:attribute{server_note}.",
            )
        target, where = found
        return Detection(
            fw.key,
            fw.template.format(target=shlex.quote(target)),
            f"Detected {fw.label} ({where}), served by {fw.server}{server_note}.\n{shutdown}.",
        )
    return Detection(None, None, TODO_COMMENT)


def _dependency_names(project_dir: Path) -> set[str]:
    """Canonical names of the project's declared dependencies (requirements*.txt, pyproject, Pipfile)."""
    names: set[str] = set()
    texts: list[str] = []
    for req in sorted(project_dir.glob("requirements*.txt")):
        texts.extend(_read(req).splitlines())
    pyproject = project_dir / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(_read(pyproject))
        except tomllib.TOMLDecodeError:
            data = {}
        project = data.get("project", {})
        texts.extend(d for d in project.get("dependencies", []) if isinstance(d, str))
        poetry = data.get("tool", {}).get("poetry", {}).get("dependencies", {})
        if isinstance(poetry, dict):
            texts.extend(str(k) for k in poetry)
    pipfile = project_dir / "Pipfile"
    if pipfile.is_file():
        texts.extend(re.findall(r"^([A-Za-z0-9._-]+)\s*=", _read(pipfile), re.MULTILINE))
    for line in texts:
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if m and not line.lstrip().startswith("-"):
            names.add(re.sub(r"[-_.]+", "-", m.group(1)).lower())
    return names


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _candidates(project_dir: Path) -> list[Path]:
    """Likely entry modules, most likely first: top-level files, then app/, src/, api/, then packages."""
    out: list[Path] = []
    for sub in _ENTRY_DIRS:
        base = project_dir / sub if sub else project_dir
        out.extend(base / name for name in _ENTRY_FILES if (base / name).is_file())
    for pkg in sorted(p for p in project_dir.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS):
        if (pkg / "__init__.py").is_file() and pkg.name not in _ENTRY_DIRS:
            out.extend(pkg / name for name in _ENTRY_FILES if (pkg / name).is_file())
    return out


def _module(project_dir: Path, file: Path) -> str:
    rel = file.relative_to(project_dir).with_suffix("")
    parts = list(rel.parts)
    if parts and parts[0] == "src" and len(parts) > 1:
        parts = parts[1:]  # src layout: uvicorn/gunicorn must run with --app-dir/--chdir src; see docs
    return ".".join(parts)


def _find_app(project_dir: Path, fw: _Framework) -> tuple[str, str] | None:
    """(module:attr target, 'file: line') of the first `name = Framework(` or app factory found."""
    assign = re.compile(rf"^(\w+)\s*(?::\s*[\w.]+\s*)?=\s*(?:\w+\.)?{fw.constructor}\(", re.MULTILINE)
    for file in _candidates(project_dir):
        text = _read(file)
        m = assign.search(text)
        rel = file.relative_to(project_dir).as_posix()
        if m:
            return (
                f"{_module(project_dir, file)}:{m.group(1)}",
                f"{rel}: {m.group(1)} = {fw.constructor}(...)",
            )
        if fw.key == "flask" and re.search(r"^def create_app\(", text, re.MULTILINE) and "Flask(" in text:
            return f"{_module(project_dir, file)}:create_app()", f"{rel}: create_app() factory"
    return None


def _detect_django(project_dir: Path, deps: set[str]) -> Detection | None:
    manage = project_dir / "manage.py"
    if not manage.is_file() and "django" not in deps:
        return None
    settings = None
    if manage.is_file():
        m = re.search(r"DJANGO_SETTINGS_MODULE['\"]\s*,\s*['\"]([\w.]+)['\"]", _read(manage))
        if m:
            settings = m.group(1)
    package = settings.rsplit(".", 1)[0] if settings and "." in settings else None
    if package is None:
        wsgi = sorted(project_dir.glob("*/wsgi.py"))
        package = wsgi[0].parent.name if wsgi else None
    # Migrations run once per deploy, before any server switches; they need manage.py.
    release = DJANGO_RELEASE if manage.is_file() else None
    start, served = _django_start(package or "mysite", deps)
    if package is None:
        return Detection(
            "django",
            start,
            "Django is a dependency but its project package was not found.\n"
            f"TODO: replace `mysite` with the package holding wsgi.py.\n{served}.",
            release,
        )
    return Detection(
        "django",
        start,
        f"Detected Django (settings {settings or package + '.settings'}).\n{served}.\n"
        'Static files: build = "python manage.py collectstatic --noinput" (or use WhiteNoise).',
        release,
    )


def _django_start(package: str, deps: set[str]) -> tuple[str, str]:
    """The start command for a Django project package and how it is served: by uvicorn (ASGI) when the
    project depends on uvicorn and not on gunicorn, else by gunicorn (WSGI)."""
    if "uvicorn" in deps and "gunicorn" not in deps:
        shutdown = "On SIGTERM uvicorn stops accepting and lets in-flight requests finish"
        return UVICORN.format(target=f"{package}.asgi:application"), f"Served by uvicorn (ASGI).\n{shutdown}"
    note = "" if "gunicorn" in deps or not deps else "; add `gunicorn` to your requirements"
    shutdown = "On SIGTERM gunicorn lets workers finish in-flight requests (up to --graceful-timeout s)"
    return GUNICORN.format(target=f"{package}.wsgi:application"), f"Served by gunicorn{note}.\n{shutdown}"
