"""Load a user's object from ``module:attribute``: the App of the CLI's ``--app``, the Celery app
``pgsched beat import-celery`` reads."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from pgsched.app import App
from pgsched.errors import AppLoadError

EXAMPLE_APP = "pgsched.example:app"


def load_attribute(spec: str, option: str) -> Any:
    """Import ``module:attr`` (the current directory is importable) and return the attribute;
    AppLoadError naming ``option`` and what went wrong otherwise."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"{option} must look like module:attribute (e.g. myproject.tasks:app), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"cannot import {module_name!r} for {option}: {exc}") from None
    except Exception as exc:  # the user's module failed while importing: say where, briefly
        raise AppLoadError(f"importing {module_name!r} for {option} raised {type(exc).__name__}: {exc}") from exc
    found = getattr(module, attr, None)
    if found is None:
        raise AppLoadError(f"{spec!r} for {option}: module {module_name!r} has no attribute {attr!r}")
    return found


def load_app(spec: str | None) -> App:
    """The pgsched App at ``module:attr`` (default: the example app)."""
    spec = spec or EXAMPLE_APP
    app = load_attribute(spec, "--app")
    if not isinstance(app, App):
        raise AppLoadError(f"{spec!r} must name a pgsched.App, found {type(app).__name__}")
    return app
