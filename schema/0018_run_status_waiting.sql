-- A run in a workflow whose parents have not finished: 'waiting' (0019 builds workflows on it).
-- Alone in its file: PostgreSQL refuses to use a new enum value in the transaction that added
-- it, so migrate.py commits after this file and runs 0019 in a new transaction.
ALTER TYPE pgsched.run_status ADD VALUE 'waiting';
