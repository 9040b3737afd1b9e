"""One driver per system for `python -m benchmarks.peers`.

A driver module is imported twice: by the orchestrator (benchmarks/peers.py, pgsched's venv),
which reads its plain-data settings (REQUIREMENTS, WORKER, PENDING_SQL, ...) and calls
``worker_argv``; and inside the system's own venv, as the benchmark client
(``python -m benchmarks.peers_drivers.<name> client``) and as the module its workers load
their tasks from. So a driver imports its library lazily, never at module level (pgsched
and raw, which run in pgsched's own venv, are the exception). Every module here outside the
drivers' lazy imports is standard library only.
"""
