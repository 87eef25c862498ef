"""Framework detection for `tako init`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tako.detect import TODO_COMMENT, detect_framework


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_fastapi_in_main(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "requirements.txt": "fastapi\nuvicorn\n",
            "main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
        },
    )
    d = detect_framework(tmp_path)
    assert d.framework == "fastapi"
    assert d.start == "uvicorn main:app --host 127.0.0.1 --port $PORT"
    assert "Detected FastAPI (main.py: app = FastAPI(...))" in d.comment
    assert "SIGTERM" in d.comment and "add `uvicorn`" not in d.comment


def test_fastapi_in_app_package_with_other_name_and_missing_server(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "x"\ndependencies = ["FastAPI>=0.110"]\n',
            "app/__init__.py": "",
            "app/main.py": "import fastapi\napi: fastapi.FastAPI = fastapi.FastAPI(title='x')\n",
        },
    )
    d = detect_framework(tmp_path)
    assert d.start == "uvicorn app.main:api --host 127.0.0.1 --port $PORT"
    assert "add `uvicorn` to your requirements" in d.comment


def test_starlette(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "requirements.txt": "starlette\nuvicorn[standard]\n",
            "app.py": "application = Starlette(routes=[])\n",
        },
    )
    d = detect_framework(tmp_path)
    assert (d.framework, d.start) == ("starlette", "uvicorn app:application --host 127.0.0.1 --port $PORT")


def test_flask_app_and_factory(tmp_path: Path) -> None:
    write(tmp_path / "a", {"requirements.txt": "Flask==3.0\ngunicorn\n", "app.py": "app = Flask(__name__)\n"})
    d = detect_framework(tmp_path / "a")
    assert d.framework == "flask"
    assert d.start == "gunicorn app:app --bind 127.0.0.1:$PORT --workers 2 --graceful-timeout 20"
    assert "--graceful-timeout" in d.comment

    factory = "from flask import Flask\n\ndef create_app():\n    return Flask(__name__)\n"
    write(tmp_path / "b", {"requirements.txt": "flask\n", "blog/__init__.py": "", "blog/wsgi.py": factory})
    d = detect_framework(tmp_path / "b")
    assert (
        d.start
        == "gunicorn 'blog.wsgi:create_app()' --bind 127.0.0.1:$PORT --workers 2 --graceful-timeout 20"
    )
    assert "add `gunicorn`" in d.comment


def test_django_from_manage_py(tmp_path: Path) -> None:
    manage = 'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")\n'
    write(tmp_path, {"manage.py": manage, "mysite/wsgi.py": "", "requirements.txt": "Django\ngunicorn\n"})
    d = detect_framework(tmp_path)
    assert d.framework == "django"
    assert (
        d.start == "gunicorn mysite.wsgi:application --bind 127.0.0.1:$PORT --workers 2 --graceful-timeout 20"
    )
    assert "mysite.settings" in d.comment


def test_django_dependency_without_manage_py(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.txt": "django\n", "proj/wsgi.py": ""})
    d = detect_framework(tmp_path)
    assert d.start is not None and d.start.startswith("gunicorn proj.wsgi:application")


def test_dependency_without_entry_file_gives_todo_target(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.txt": "fastapi\nuvicorn\n"})
    d = detect_framework(tmp_path)
    assert d.framework == "fastapi" and d.start is not None and "main:app" in d.start
    assert "TODO" in d.comment


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"requirements.txt": "requests\n", "main.py": "print('hi')\n"},
        {"package.json": "{}", "server.js": "listen(process.env.PORT)"},
    ],
)
def test_unknown_falls_back_to_todo(tmp_path: Path, files: dict[str, str]) -> None:
    d = detect_framework(write(tmp_path, files))
    assert (d.framework, d.start, d.comment) == (None, None, TODO_COMMENT)
    assert "127.0.0.1:$PORT" in d.comment


def test_code_detection_without_requirements(tmp_path: Path) -> None:
    # No dependency list at all: the code decides, and no "add ..." advice is given.
    write(tmp_path, {"main.py": "app = FastAPI()\n"})
    d = detect_framework(tmp_path)
    assert d.framework == "fastapi" and "add `" not in d.comment


def test_examples_are_detected() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    fa = detect_framework(root / "fastapi")
    fl = detect_framework(root / "flask")
    assert fa.framework == "fastapi" and fa.start is not None and fa.start.startswith("uvicorn main:app")
    assert fl.framework == "flask" and fl.start is not None and fl.start.startswith("gunicorn app:app")


def test_a_django_project_gets_the_migrate_release_command(tmp_path: Path) -> None:
    manage = 'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")\n'
    write(tmp_path, {"manage.py": manage, "shop/wsgi.py": "", "requirements.txt": "Django\ngunicorn\n"})
    d = detect_framework(tmp_path)
    assert d.release == "python manage.py migrate"
    assert d.start is not None and d.start.startswith("gunicorn shop.wsgi:application")


def test_django_without_manage_py_suggests_no_release_command(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.txt": "django\ngunicorn\n", "proj/wsgi.py": ""})
    assert detect_framework(tmp_path).release is None


def test_django_served_by_uvicorn_when_it_is_the_projects_server(tmp_path: Path) -> None:
    manage = 'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")\n'
    files = {
        "manage.py": manage,
        "shop/asgi.py": "",
        "shop/wsgi.py": "",
        "requirements.txt": "django\nuvicorn\n",
    }
    d = detect_framework(write(tmp_path, files))
    assert d.start == "uvicorn shop.asgi:application --host 127.0.0.1 --port $PORT"
    assert "Served by uvicorn (ASGI)" in d.comment and d.release == "python manage.py migrate"
    # Both servers listed: gunicorn (WSGI), the production default.
    (tmp_path / "requirements.txt").write_text("django\nuvicorn\ngunicorn\n")
    assert (detect_framework(tmp_path).start or "").startswith("gunicorn shop.wsgi:application")


def test_other_frameworks_suggest_no_release_command(tmp_path: Path) -> None:
    write(tmp_path, {"main.py": "app = FastAPI()\n", "requirements.txt": "fastapi\nuvicorn\n"})
    assert detect_framework(tmp_path).release is None


def test_the_django_example_is_detected() -> None:
    d = detect_framework(Path(__file__).resolve().parents[2] / "examples" / "django")
    assert d.framework == "django" and d.release == "python manage.py migrate"
    assert d.start is not None and d.start.startswith("gunicorn mysite.wsgi:application")
