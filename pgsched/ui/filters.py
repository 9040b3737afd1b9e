"""The runs page's filters, read from a query string: each value checked here, so a bad one
is a 400 page naming it (never a 500), and handed to ``pgsched.runs.list_runs`` as is."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import urlencode

from pgsched.errors import InvalidInput
from pgsched.runs import RUN_STATUSES, parse_args_filter
from pgsched.tenants import check_tenant

PAGE_SIZES = (25, 50, 100, 200)
_TIMES = ("created_after", "created_before", "finished_after", "finished_before")
_TEXTS = ("queue", "task", "job", "error_type")
MAX_TEXT = 200


@dataclass(frozen=True)
class RunFilter:
    """What the runs page shows: every field optional; ``tenant`` only for keys without one."""

    status: str | None = None
    queue: str | None = None
    task: str | None = None
    job: str | None = None
    tenant: str | None = None
    error_type: str | None = None
    id: int | None = None
    args: str | None = None  # JSON text, as typed: kept for the form and the links
    created_after: str | None = None
    created_before: str | None = None
    finished_after: str | None = None
    finished_before: str | None = None
    limit: int = 50

    def list_runs_kwargs(self, tenant: str | None) -> dict[str, Any]:
        """Keyword arguments for ``list_runs`` (without paging). ``tenant`` is the key's: a
        tenant key sees its own tenant whatever the filter says."""
        return {
            "status": self.status,
            "queue": self.queue,
            "task": self.task,
            "job": self.job,
            "error_type": self.error_type,
            "run_id": self.id,
            "args": None if self.args is None else json.loads(self.args),
            "tenant": tenant if tenant is not None else self.tenant,
            **{name: _instant(name, getattr(self, name)) for name in _TIMES},
        }

    def query(self, **changes: Any) -> str:
        """This filter as a query string (with ``changes``), for links and the next page."""
        values = {**asdict(self), **changes}
        return urlencode({k: v for k, v in values.items() if v is not None and v != ""})

    def given(self) -> dict[str, Any]:
        """The filter's fields that are set (the page size aside): hidden fields of a form."""
        return {name: value for name, value in asdict(self).items() if value is not None and name != "limit"}

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self) if f.name != "limit")


KNOWN = {f.name for f in fields(RunFilter)}


def parse_run_filter(params: Mapping[str, str], *, extra: frozenset[str] = frozenset()) -> RunFilter:
    """A RunFilter from query parameters; InvalidInput (a 400 page) names what is wrong."""
    for name in params:
        if name not in KNOWN and name not in extra and name != "cursor":
            raise InvalidInput(f"unknown filter {name!r}; the runs page takes: {', '.join(sorted(KNOWN))}")
    given = {name: value.strip() for name, value in params.items() if name in KNOWN and value.strip()}
    for name, value in given.items():
        if len(value) > MAX_TEXT or "\x00" in value:
            raise InvalidInput(f"{name} must be at most {MAX_TEXT} characters without NUL, got {value[:40]!r}...")
    status = given.get("status")
    if status is not None and status not in RUN_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    check_tenant(given.get("tenant"))
    for name in _TIMES:
        _instant(name, given.get(name))
    texts: dict[str, Any] = {name: given.get(name) for name in ("status", "tenant", *_TEXTS, *_TIMES)}
    return RunFilter(
        **texts, id=_run_id(given.get("id")), args=_args(given.get("args")), limit=_page_size(given.get("limit"))
    )


def parse_cursor(text: str | None) -> int | None:
    """The keyset position of a ``cursor`` link: the last id of the previous page."""
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 2**63:
        raise InvalidInput(f"cursor must be a link's 'Older' position (a run id), got {text[:40]!r}")
    return int(text)


def parse_run_id(text: str, what: str = "run id") -> int:
    """A run id (or, with ``what``, a workflow id) from a URL path."""
    if not text.isascii() or not text.isdigit():
        raise InvalidInput(f"a {what} is a positive integer, got {text[:40]!r}")
    value = int(text)
    if not 0 < value < 2**63:
        raise InvalidInput(f"a {what} is a positive integer, got {value}")
    return value


def _run_id(text: str | None) -> int | None:
    return None if text is None else parse_run_id(text)


def _args(text: str | None) -> str | None:
    if text is not None:
        parse_args_filter(text)
    return text


def _page_size(text: str | None) -> int:
    if text is None:
        return 50
    if not text.isdigit() or int(text) not in PAGE_SIZES:
        raise InvalidInput(f"limit (the page size) must be one of {', '.join(map(str, PAGE_SIZES))}, got {text!r}")
    return int(text)


def _instant(name: str, text: str | None) -> datetime | None:
    """An ISO 8601 instant; without an offset it is UTC (what the form's time fields send)."""
    if text is None:
        return None
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a date and time such as 2030-01-02T03:04 (UTC), got {text!r}") from None
    if not 1 < instant.year < 9999:
        raise InvalidInput(f"{name} must be between the years 2 and 9998, got {text!r}")
    return instant if instant.utcoffset() is not None else instant.replace(tzinfo=timezone.utc)
