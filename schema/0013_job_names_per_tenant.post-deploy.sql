-- Contract (run by `pgsched migrate --post-deploy` once every process runs this release): job
-- names are unique per tenant only (0012's index). The previous release's upsert names this
-- constraint (ON CONFLICT (name)), so it must not run against a database without it.

SET LOCAL lock_timeout = '10s';

ALTER TABLE pgsched.jobs DROP CONSTRAINT jobs_name_key;
