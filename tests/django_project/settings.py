"""Settings of the test Django project. The database is the one the test names in
PGSCHED_TEST_DJANGO_DSN (a libpq conninfo), in-process and in the worker it starts alike."""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ["PGSCHED_TEST_DJANGO_DSN"])

SECRET_KEY = "tests-only"
USE_TZ = True
INSTALLED_APPS = ["django_tasks", "pgsched.contrib.django", "tests.django_project.shop"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db["dbname"],
        "USER": _db.get("user", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PGSCHED_APP = "tests.django_project.shop.tasks:app"
TASKS = {
    "default": {
        "BACKEND": "pgsched.contrib.django.tasks.PgschedBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"APP": PGSCHED_APP},
    }
}
