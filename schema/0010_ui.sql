-- The dashboard (/ui): browser sessions, one-time sign-in links, a per-minute rollup of
-- finished runs for its charts and anomaly flags, and an index for lists of failed runs.
-- Expand-only: three new tables and an index (building it reads the runs table once).

-- A browser session started with an API key. Only the SHA-256 of the session token is stored
-- (the cookie holds the token), so a database dump cannot be replayed as a cookie. Every API
-- process reads sessions from here: a session started behind one process is honoured by all,
-- and revoking the key (or deleting the row: Log out) ends it everywhere at the next request.
CREATE TABLE pgsched.ui_sessions (
    token_hash bytea PRIMARY KEY CONSTRAINT ui_session_hash_must_be_sha256 CHECK (length(token_hash) = 32),
    key_id     bigint NOT NULL REFERENCES pgsched.api_keys (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX ui_sessions_expires_idx ON pgsched.ui_sessions (expires_at);

-- A one-time sign-in link (`pgsched dev` prints one): consumed by its first use, which starts
-- a session for its key. Stored as a digest, like keys and sessions.
CREATE TABLE pgsched.ui_sign_in_tokens (
    token_hash bytea PRIMARY KEY CONSTRAINT ui_sign_in_hash_must_be_sha256 CHECK (length(token_hash) = 32),
    key_id     bigint NOT NULL REFERENCES pgsched.api_keys (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);

-- Finished runs per queue, task and minute, written by the beat leader's maintenance from the
-- runs that finished in the last few minutes (runs_finished_idx), never by the worker's hot
-- path. Each round recomputes those minutes whole, so a repeated or overlapping round writes
-- the same numbers. Kept for 8 days: the anomaly baseline compares against the last 7.
CREATE TABLE pgsched.run_rollup (
    minute      timestamptz NOT NULL,
    queue       text NOT NULL,
    task        text NOT NULL,
    tenant      text NOT NULL DEFAULT '',
    succeeded   integer NOT NULL DEFAULT 0,
    failed      integer NOT NULL DEFAULT 0,
    -- Seconds from start to finish, summed over the runs counted (an average is sum / runs).
    run_s_sum   float8 NOT NULL DEFAULT 0,
    -- Seconds each waited from due (or created, if later) to its last start, summed likewise.
    wait_s_sum  float8 NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, queue, task, tenant)
);

-- The runs list narrowed to failed runs (a failure group's drill-down: one task's failed runs,
-- the bulk retry of them, their capped count), newest first, without walking every run's id:
-- small while failures are rare. On 10^6 runs, 2% failed, a page of one task's failed runs read
-- ~100,000 rows of the primary key without it; an index on id alone still read every failed
-- run of the other tasks.
CREATE INDEX runs_failed_task_idx ON pgsched.runs (task, id) WHERE status = 'failed';
