"""pgsched: a job queue and cron scheduler that needs nothing but PostgreSQL."""

from pgsched.app import App, Task
from pgsched.errors import Cancel, PgschedError, Retry

__all__ = ["App", "Task", "Cancel", "PgschedError", "Retry"]
__version__ = "0.1.0"
