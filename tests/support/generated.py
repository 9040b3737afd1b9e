"""The hypothesis settings of the generated-input tests (issue #11's and every later entry point's)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Each example runs a handful of statements; the database, not the generator, sets the pace.
EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
