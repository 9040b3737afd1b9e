"""Load a user's App from ``module:attribute`` (the CLI's ``--app``)."""

from __future__ import annotations

import importlib
import os
import sys

from pgsched.app import App
from pgsched.errors import AppLoadError

EXAMPLE_APP = "pgsched.example:app"


def load_app(spec: str | None) -> App:
    """Import ``module:attr`` (the current directory is importable) and return the App there."""
    spec = spec or EXAMPLE_APP
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"--app must look like module:attribute (e.g. myproject.tasks:app), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"cannot import {module_name!r} for --app: {exc}") from None
    except Exception as exc:  # the user's module failed while importing: say where, briefly
        raise AppLoadError(f"importing {module_name!r} for --app raised {type(exc).__name__}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        found = "nothing" if app is None else type(app).__name__
        raise AppLoadError(f"{spec!r} must name a pgsched.App, found {found}")
    return app
