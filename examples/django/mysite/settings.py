"""Settings of the Django example: everything that differs between machines comes from the environment.

On a Tako server the SQLite database lives in `TAKO_DATA_DIR` (kept across deploys and rollbacks); on
your machine, beside this project.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Set a real one with `tako secrets set DJANGO_SECRET_KEY`; this fallback is only good for trying it out.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-set-DJANGO_SECRET_KEY")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
# The proxy only forwards requests for the routes of tako.toml; list them here to be strict.
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",")

INSTALLED_APPS = ["visits"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": Path(os.environ.get("TAKO_DATA_DIR") or BASE_DIR) / "db.sqlite3",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
