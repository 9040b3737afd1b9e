"""A Celery project as people write one, for tests/test_celery_import.py: a real Celery app whose
beat_schedule holds every kind of schedule the importer meets. No broker is needed to read it."""

from __future__ import annotations

from datetime import datetime, timedelta

from celery import Celery
from celery.schedules import crontab, schedule, solar

from pgsched import App


class every_other_day(schedule):  # lower case, as Celery names its own schedule classes
    """A custom schedule class: only its own code knows when it fires."""

    def is_due(self, last_run_at: datetime) -> tuple[bool, float]:
        return (datetime.now() - last_run_at).days >= 2, 3600.0


celery_app = Celery("shop", broker="memory://")
celery_app.conf.timezone = "Europe/Berlin"
celery_app.conf.beat_schedule = {
    "morning-report": {
        "task": "shop.tasks.report",
        "schedule": crontab(minute=30, hour=7, day_of_week="mon-fri"),
        "kwargs": {"kind": "daily"},
        "options": {"queue": "reports"},
    },
    "sync-stock": {"task": "shop.tasks.sync_stock", "schedule": timedelta(minutes=5)},
    "heartbeat": {"task": "shop.tasks.heartbeat", "schedule": 30.0},
    "cleanup": {"task": "shop.tasks.cleanup", "schedule": schedule(run_every=timedelta(hours=1)), "args": (7,)},
    "sunrise-lights": {"task": "shop.tasks.lights", "schedule": solar("sunrise", 52.52, 13.40)},
    "odd-days": {"task": "shop.tasks.cleanup", "schedule": every_other_day(timedelta(days=2))},
    "with-expiry": {"task": "shop.tasks.heartbeat", "schedule": 60.0, "options": {"expires": 30}},
}
not_a_celery_app = object()

# The pgsched side of the same project: its tasks keep their Celery names, so the jobs find them.
app = App()


@app.task(name="shop.tasks.cleanup")
def cleanup(days: int, dry_run: bool = False) -> None: ...
