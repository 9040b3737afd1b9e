-- Cancelled runs in the per-minute rollup too (issue 13): /metrics' pgsched_runs gauge reads
-- finished runs (succeeded, failed, cancelled) from the rollup, and only the unfinished ones
-- from the runs table, instead of counting every retained run at each scrape.
--
-- Expand only: a column with a constant default (no rewrite; an instant's lock on run_rollup,
-- none on runs). The previous release's beat recounts the rollup without it, leaving 0 in the
-- minutes it writes until the new release's beat leads.

SET LOCAL lock_timeout = '10s';  -- behind a long transaction, fail the upgrade rather than stall the beat

ALTER TABLE pgsched.run_rollup ADD COLUMN cancelled integer NOT NULL DEFAULT 0;
