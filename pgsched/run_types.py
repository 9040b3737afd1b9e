"""The plain data of the hot path: a run a worker claimed, and what to write back for it.

This module imports nothing else of pgsched, so the hops that pass these values along
(fetcher → executor / process pool → completer) all point down to it and never to each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class ClaimedRun:
    """A run this worker holds (its row says status 'running', attempt, worker_id = us)."""

    id: int
    task: str
    args: Any
    attempt: int
    max_attempts: int
    queue: str = "default"
    trace_context: str | None = None  # the W3C traceparent of the code that queued it
    request_id: str | None = None  # the X-Request-ID of the API request that queued it
    # Where it stood in claim order (the claim index's key after its queue): the fetcher's next
    # claim of its queue starts near there (pgsched.claim_cursor).
    priority: int = 0
    run_at: datetime | None = None
    has_parents: bool = False  # a workflow step: its parents' results are read before it runs
    # Claimed within its tenant's max_running (not a claim's column): its end frees a slot other
    # workers may be waiting for, as a limited queue's run does.
    tenant_limited: bool = False


@dataclass(slots=True)
class Outcome:
    """What to write back for one run: a final status, or 'queued' again for a retry."""

    run_id: int
    attempt: int
    status: str  # succeeded | failed | cancelled | queued (retry)
    result: str | None = None  # JSON text
    error: str | None = None  # JSON text of one errors[] entry
    retry_delay_s: float = 0.0
