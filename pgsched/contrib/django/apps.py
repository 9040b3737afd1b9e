"""The Django app config: what INSTALLED_APPS names to get ``manage.py pgsched_worker``."""

from __future__ import annotations

from django.apps import AppConfig


class PgschedConfig(AppConfig):  # type: ignore[misc]  # Django ships no types: AppConfig is Any
    name = "pgsched.contrib.django"
    label = "pgsched"
    verbose_name = "pgsched"
