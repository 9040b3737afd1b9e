"""Django (on PostgreSQL, psycopg 3): enqueue on Django's own connection, so a run queued inside
``transaction.atomic()`` exists if and only if that transaction commits — no ``on_commit``,
which loses the task if the process dies between the commit and the hook.

    # myproject/tasks.py
    from pgsched.contrib.django import DjangoApp
    app = DjangoApp()                       # the DSN of settings.DATABASES["default"]

    @app.task
    def send_receipt(order_id: int) -> None: ...

    with transaction.atomic():
        order = Order.objects.create(...)
        send_receipt.delay(order.id)        # in the atomic block's transaction

Outside an atomic block a :class:`DjangoApp` enqueues through its own pool, as any App does.
Add ``"pgsched.contrib.django"`` to INSTALLED_APPS for ``manage.py pgsched_worker``.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pgsched.app import App
from pgsched.errors import ConfigError


def django_connection(using: str = "default") -> psycopg.Connection[Any]:
    """The psycopg connection under Django's connection ``using`` (opened if need be)."""
    from django.db import connections

    wrapper = connections[using]
    if wrapper.vendor != "postgresql":
        raise ConfigError(f"pgsched needs PostgreSQL: Django's {using!r} database is {wrapper.vendor}")
    wrapper.ensure_connection()
    driver = wrapper.connection
    if not isinstance(driver, psycopg.Connection):
        raise ConfigError(
            f"pgsched needs Django on psycopg 3 (install psycopg); {using!r} uses {type(driver).__module__}"
        )
    return driver


def django_dsn(using: str = "default") -> str:
    """A DSN for the database Django's ``using`` connection reaches (for pgsched's own pool)."""
    from django.db import connections

    params = connections[using].get_connection_params()
    # Django adds Python objects (a cursor factory, an adapters context) beside the libpq keywords.
    keywords = {k: v for k, v in params.items() if isinstance(v, (str, int)) and not isinstance(v, bool)}
    return make_conninfo("", **keywords)


# The pgsched task that runs a task of Django's Tasks framework (pgsched.contrib.django.tasks).
DJANGO_TASK = "pgsched.contrib.django.run_task"


def run_task(path: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run the Django Tasks task at ``path`` (module.name of its module-level Task) with its args."""
    from django.utils.module_loading import import_string

    return import_string(path).call(*args, **kwargs)


class DjangoApp(App):
    """An App on Django's database: inside ``transaction.atomic()`` its enqueues (``delay``,
    ``apply_async``, ``enqueue`` without ``conn=``) join the atomic block's transaction. It also
    runs the tasks of Django's Tasks framework queued through ``PgschedBackend``."""

    def __init__(self, dsn: str | None = None, *, using: str = "default", **options: Any) -> None:
        super().__init__(dsn, **options)
        self.using = using
        self.task(name=DJANGO_TASK)(run_task)

    @property
    def dsn(self) -> str:
        """App(dsn=...), else the DSN of Django's ``using`` database (read when first needed:
        the settings may not be configured when this module is imported)."""
        if self._dsn is None:
            self._dsn = django_dsn(self.using)
        return self._dsn

    def default_connection(self) -> psycopg.Connection[Any] | None:
        from django.db import transaction

        if transaction.get_connection(self.using).in_atomic_block:
            return django_connection(self.using)
        return None
