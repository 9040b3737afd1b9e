"""Helpers the test modules share (plain code, no fixtures: those live in tests/conftest.py).

- ``waiting``: ``wait_until`` and its async twin, the one deadline loop of the suite;
- ``db``: ``scalar`` and the scratch databases behind conftest's fixtures;
- ``processes``: real ``pgsched`` processes (worker, beat, api) with their logs, waits that
  fail as soon as one dies, diagnostics on a timeout, and no orphans;
- ``workers``: the worker harness of the multi-process tests (``Workers``, the ``executions`` table);
- ``inprocess``: a ``Worker`` running in the test's own event loop (``RunningWorker``);
- ``api``: the REST API's test client with keys of every kind, and ``pgsched api`` served over HTTP;
- ``history``: where a run is (runs or runs_history), runs as they ended before the move, a
  round of the leader's mover, an installation without day partitions.
"""
