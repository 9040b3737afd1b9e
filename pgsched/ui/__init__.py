"""The dashboard (``/ui``): server-rendered pages over the same Litestar app, pool, keys and
library functions as the REST API. ``ui_routes()`` and ``template_config()`` are what the app
factory adds; ``/`` redirects here. Assets ship in ``static/``: no CDN (htmx 2.0.11, the
minified file of npm's htmx.org package, 0BSD licence; the CSS and JS are pgsched's own).

Modules: access (sessions on requests, CSRF, scopes), sessions (the tables), filters (the runs
page's query string), pages (GET), actions (POST), signin, insights (rollup charts and
anomalies), reads (queries only the dashboard needs), render (templates), errors (error pages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Router, get
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from pgsched.ui.actions import ActionController
from pgsched.ui.errors import UI_EXCEPTION_HANDLERS
from pgsched.ui.pages import PageController
from pgsched.ui.render import template_config
from pgsched.ui.signin import SignInController

# Paths the REST API's key middleware leaves to the dashboard (its session guard, or public).
UI_PATHS = ["^/ui(/|$)", "^/$"]

__all__ = ["UI_PATHS", "template_config", "ui_routes"]


@get("/", include_in_schema=False)
async def to_dashboard() -> Redirect:
    return Redirect("/ui")


def ui_routes() -> list[Any]:
    pages = Router(
        path="/",
        route_handlers=[PageController, ActionController, SignInController],
        exception_handlers=UI_EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        include_in_schema=False,
    )
    static = create_static_files_router(
        path="/ui/static", directories=[Path(__file__).parent / "static"], include_in_schema=False
    )
    return [pages, static, to_dashboard]
