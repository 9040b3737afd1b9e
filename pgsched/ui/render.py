"""Turning a page's data into HTML: the template engine (Jinja2, templates/ beside this
module), its filters (times and durations in words), and ``page()``, which every handler
answers with. An htmx request (a live update) gets only the page's live part."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template.config import TemplateConfig

from pgsched.ui.access import viewer
from pgsched.ui.insights import bars

HERE = Path(__file__).parent
LIVE_EVERY_S = 2  # live parts poll this often, and only while the tab is visible


def page(
    request: Request[Any, Any, Any], name: str, *, live: str | None = None, status_code: int = 200, **context: Any
) -> Template:
    """The template ``name`` (or its live part ``live`` for an htmx poll) with ``context``."""
    chosen = live if live is not None and request.headers.get("hx-request") == "true" else name
    return Template(
        template_name=chosen,
        context={
            **viewer(request),
            **context,
            "path": request.url.path,
            "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            "live_every_s": LIVE_EVERY_S,
        },
        status_code=status_code,
    )


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_add_filters)


def _add_filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters.update(
        {"when": when, "ago": ago, "seconds": seconds, "pretty": pretty, "count": count, "bars": bars}
    )


def when(instant: datetime | None) -> str:
    if instant is None:
        return "—"
    return instant.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(instant: datetime | None) -> str:
    """How long ago (or, for a future instant, in how long), in words."""
    if instant is None:
        return "—"
    delta = (datetime.now(timezone.utc) - instant).total_seconds()
    text = seconds(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    if value < 3600:
        return f"{value / 60:.0f} min"
    if value < 86400:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} days"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def count(value: int, cap: int) -> str:
    """A capped count in words: "10,000+" past the cap."""
    return f"{cap:,}+" if value > cap else f"{value:,}"
