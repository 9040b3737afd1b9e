# The checks CI runs (.ci/run), one target each. Another environment: make VENV=/path/to/venv ...
# Setup, as README says: python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]'
VENV ?= .venv
BIN := $(VENV)/bin
# Arguments for a benchmark: make bench ARGS='--runs 5000'
ARGS ?=

.PHONY: test test-fast lint types docs bench screenshots

# The whole suite, as README's test command and CI run it (real PostgreSQL, PgBouncer, Redis, processes).
test:
	$(BIN)/pytest

# Skips the multi-process fault tests (SIGKILL, SIGTERM, several workers); CI runs them.
test-fast:
	$(BIN)/pytest -m 'not slow'

# Lint, format and types: what CI checks before the tests.
lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	VENV=$(VENV) .ci/typecheck

# Types only (mypy strict on pgsched and pgsched.cli; see .ci/typecheck for why a script).
types:
	VENV=$(VENV) .ci/typecheck

# The documentation site; --strict turns a broken link or a page missing from the nav into a failure.
docs:
	$(BIN)/mkdocs build --strict

# The dashboard screenshots README and docs/guides/dashboard.md show: the browser tests take
# them (build/screenshots/, a real Chromium on real processes), and these are the ones published.
SHOWN_SCREENSHOTS := queues runs-live run-failed queues-phone-dark jobs failures workflows
screenshots:
	$(BIN)/pytest tests/test_ui_browser.py -q
	mkdir -p docs/images/dashboard
	for name in $(SHOWN_SCREENSHOTS); do cp build/screenshots/$$name.png docs/images/dashboard/; done

# Throughput against a raw-SQL baseline measured in the same run (a throwaway embedded PostgreSQL
# unless ARGS='--dsn ...'). The other questions: make bench-api, bench-beat, bench-scale, bench-peers, bench-soak.
bench:
	$(BIN)/python -m benchmarks.throughput $(ARGS)

bench-%:
	$(BIN)/python -m benchmarks.$* $(ARGS)
