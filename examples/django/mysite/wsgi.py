"""The WSGI application gunicorn serves; the Tako SDK answers Tako's health check, /_tako/status."""

import os

import tako_sdk
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = tako_sdk.WSGIMiddleware(get_wsgi_application())
