-- The queue-name check, cheaper: the bounded repetition {0,62} made PostgreSQL's regex engine
-- build a 62-step automaton per row (~2.8 us, half the server's cost of a bulk-enqueued
-- run); an unbounded class plus a length test is the same rule at ~0.2 us. Same names, so
-- a bad row's error message is unchanged.
--
-- Re-adding a CHECK reads every row of the table under its ALTER TABLE lock, which holds
-- claims and completions for that time: on a large runs table, migrate in a quiet moment.

ALTER TABLE pgsched.runs
    DROP CONSTRAINT queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63,
    ADD CONSTRAINT queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63
        CHECK (queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' AND length(queue) <= 63);

ALTER TABLE pgsched.jobs
    DROP CONSTRAINT job_queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63,
    ADD CONSTRAINT job_queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63
        CHECK (queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' AND length(queue) <= 63);
