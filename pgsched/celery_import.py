"""``pgsched beat import-celery``: a Celery app's ``beat_schedule`` carried over to pgsched jobs.

Each entry becomes the job of the same name (created, or updated in place), in the Celery app's
``timezone``: a ``crontab`` becomes a cron expression, a ``timedelta``, a number of seconds or a
``schedule(run_every=...)`` an interval; ``args``/``kwargs`` the job's args (positional args are
bound by the pgsched task's signature, so they need ``--app``); ``options.queue`` and
``options.priority`` the job's. An entry that cannot be carried over as it is (a ``solar``
schedule, a custom schedule class, an option pgsched has no counterpart for) is skipped with the
reason, and the others still import. Celery is imported only when this runs (``pgsched[celery]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

import psycopg

from pgsched import calling
from pgsched.app import App
from pgsched.errors import AppLoadError, ConfigError, InvalidInput, PgschedError
from pgsched.jobs import JobNotFound, JobSpec, get_job, upsert_job
from pgsched.loader import load_attribute
from pgsched.schedule import Schedule

ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative"})
CARRIED_OPTIONS = frozenset({"queue", "priority"})


class CannotCarryOver(PgschedError):
    """This beat_schedule entry has no pgsched equivalent."""


@dataclass(frozen=True)
class ImportedEntry:
    """One beat_schedule entry: the job it becomes, or why it cannot."""

    name: str
    task: str
    schedule: str  # as a person reads it: "cron 0 7 * * mon-fri (Europe/Berlin)", "every 30s"
    spec: JobSpec | None
    skipped: str | None = None  # the reason, when spec is None
    action: str = ""  # create, update, skip (set by import_entries)

    def row(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": self.name,
            "task": self.task,
            "schedule": self.schedule,
            "args": dict(spec.args) if spec else None,
            "queue": spec.queue if spec else None,
            "action": self.action if self.skipped is None else f"skip: {self.skipped}",
        }


def load_celery_app(spec: str) -> Any:
    """The Celery app at ``module:attribute`` (Celery itself must be installed)."""
    try:
        import celery
    except ImportError:
        raise ConfigError("import-celery needs Celery installed: pip install 'pgsched[celery]'") from None
    found = load_attribute(spec, "the Celery app")
    if not isinstance(found, celery.Celery):
        raise AppLoadError(f"{spec!r} must name a Celery app, found {type(found).__name__}")
    return found


def read_beat_schedule(celery_app: Any, app: App | None = None) -> list[ImportedEntry]:
    """Every entry of the Celery app's beat_schedule, translated (or with its reason to skip).
    ``app`` (the pgsched App) lends its tasks' signatures to positional args."""
    tz = str(celery_app.conf.timezone or "UTC")
    schedule = celery_app.conf.beat_schedule or {}
    return [_translate(str(name), entry, tz, app) for name, entry in schedule.items()]


def _translate(name: str, entry: Any, tz: str, app: App | None) -> ImportedEntry:
    task = str(entry.get("task", "")) if isinstance(entry, Mapping) else ""
    try:
        if not isinstance(entry, Mapping):
            raise CannotCarryOver(f"an entry is a dict, got {type(entry).__name__}")
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            raise CannotCarryOver(f"entry keys {', '.join(unknown)} have no pgsched counterpart")
        schedule, shown = _schedule(entry.get("schedule"), tz)
        options = _options(entry.get("options") or {})
        spec = JobSpec(
            name=name,
            task=task,
            schedule=schedule,
            args=_args(task, entry.get("args") or (), entry.get("kwargs") or {}, app),
            **options,
        )
    except (CannotCarryOver, InvalidInput) as exc:
        shown = _shown_schedule(entry.get("schedule") if isinstance(entry, Mapping) else None)
        return ImportedEntry(name, task, shown, None, skipped=str(exc), action="skip")
    return ImportedEntry(name, task, shown, spec)


def _schedule(celery_schedule: Any, tz: str) -> tuple[Schedule, str]:
    """A pgsched Schedule for a Celery one, and how to show it."""
    from celery.schedules import crontab, schedule, solar

    if isinstance(celery_schedule, crontab):
        cron = " ".join(
            str(field)
            for field in (
                celery_schedule._orig_minute,
                celery_schedule._orig_hour,
                celery_schedule._orig_day_of_month,
                celery_schedule._orig_month_of_year,
                celery_schedule._orig_day_of_week,
            )
        )
        return Schedule(cron=cron, tz=tz), f"cron {cron} ({tz})"
    if isinstance(celery_schedule, solar):
        raise CannotCarryOver(
            f"solar schedules ({celery_schedule.event} at {celery_schedule.lat}, {celery_schedule.lon}) "
            "have no pgsched equivalent: pgsched fires on cron, intervals and instants"
        )
    if isinstance(celery_schedule, schedule) and type(celery_schedule) is schedule:
        celery_schedule = celery_schedule.run_every
    if isinstance(celery_schedule, timedelta):
        celery_schedule = celery_schedule.total_seconds()
    if isinstance(celery_schedule, (int, float)) and not isinstance(celery_schedule, bool):
        seconds = float(celery_schedule)
        return Schedule(every_s=seconds), f"every {seconds:g}s"
    raise CannotCarryOver(
        f"the schedule class {type(celery_schedule).__name__} is custom: pgsched cannot know when it fires"
    )


def _shown_schedule(celery_schedule: Any) -> str:
    return type(celery_schedule).__name__ if celery_schedule is not None else "-"


def _options(options: Any) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise CannotCarryOver(f"options must be a dict, got {type(options).__name__}")
    dropped = sorted(set(options) - CARRIED_OPTIONS)
    if dropped:
        raise CannotCarryOver(f"options {', '.join(dropped)} have no pgsched counterpart for jobs")
    return {name: options[name] for name in CARRIED_OPTIONS if options.get(name) is not None}


def _args(task: str, args: Any, kwargs: Any, app: App | None) -> dict[str, Any]:
    """The job's args by name: kwargs as they are, positional args bound by the task's signature."""
    known = app.tasks.get(task) if app is not None else None
    if known is not None:
        return calling.bind_by_name(task, known.signature, args, kwargs)
    if args:
        raise CannotCarryOver(
            f"positional args {tuple(args)!r} need the task's signature to be named: "
            f"pass --app with the pgsched app that registers {task!r}"
        )
    if not isinstance(kwargs, Mapping):
        raise CannotCarryOver(f"kwargs must be a dict, got {type(kwargs).__name__}")
    return dict(kwargs)


def import_entries(
    conn: psycopg.Connection[Any], entries: list[ImportedEntry], *, dry_run: bool
) -> list[ImportedEntry]:
    """Create or update the job of each entry that translated (none with ``dry_run``); every
    entry comes back with its action: create, update or skip."""
    done = []
    with conn.transaction():  # all of them or, should the database refuse one, none
        for entry in entries:
            if entry.spec is None:
                done.append(entry)
                continue
            if dry_run:
                action = "update" if _exists(conn, entry.name) else "create"
            else:
                action = "create" if upsert_job(conn, entry.spec) else "update"
            done.append(ImportedEntry(entry.name, entry.task, entry.schedule, entry.spec, action=action))
    return done


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    try:
        get_job(conn, name)
    except JobNotFound:
        return False
    return True
