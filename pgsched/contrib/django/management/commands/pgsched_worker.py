"""``manage.py pgsched_worker``: a pgsched worker inside the Django project (settings loaded,
apps ready), for the App named by ``--app`` or ``settings.PGSCHED_APP``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from pgsched.errors import PgschedError
from pgsched.loader import load_app
from pgsched.logs import configure_logging
from pgsched.worker import WorkerOptions, run_worker


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no types: BaseCommand is Any
    help = "Run a pgsched worker for this project's tasks until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--app", help="module:attribute of your pgsched App (default: settings.PGSCHED_APP)")
        parser.add_argument("--concurrency", type=int, default=WorkerOptions.concurrency)
        parser.add_argument("--queues", help="Comma-separated queues (default: every queue the app's tasks use)")
        parser.add_argument("--log-level", default="info")

    def handle(self, *args: Any, **options: Any) -> None:
        spec = options["app"] or getattr(settings, "PGSCHED_APP", None)
        if not spec:
            raise CommandError("name your pgsched App: --app module:attribute, or settings.PGSCHED_APP")
        try:
            app = load_app(spec)
            worker = WorkerOptions(
                concurrency=options["concurrency"],
                queues=options["queues"].split(",") if options["queues"] else None,
                app_path=spec,
            )
        except (PgschedError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        configure_logging(options["log_level"], "text")
        run_worker(app, worker)
