"""pgsched: a job queue and cron scheduler that needs nothing but PostgreSQL."""

from pgsched.app import App, Task
from pgsched.context import current_run
from pgsched.errors import Cancel, PgschedError, Retry

__all__ = ["App", "Cancel", "PgschedError", "Retry", "Task", "current_run"]
__version__ = "0.1.0"
