"""pgsched: a job queue and cron scheduler that needs nothing but PostgreSQL."""

from pgsched.app import App, Task
from pgsched.canvas import chain, chord, group
from pgsched.context import current_run
from pgsched.errors import Cancel, PgschedError, Retry

__all__ = ["App", "Cancel", "PgschedError", "Retry", "Task", "chain", "chord", "current_run", "group"]
__version__ = "0.1.0"
