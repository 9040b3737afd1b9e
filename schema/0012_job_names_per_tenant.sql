-- Job names unique within a tenant, not across tenants (issue 11): a tenant creating a job
-- named like another tenant's got 409 "the job name … is taken", so one tenant could learn
-- another's job names. A job without a tenant (an admin's, or declared in code) has its own
-- namespace: coalesce(tenant, '') — '' is no tenant's name (0009's valid_tenant).
--
-- Expand: this index, which this release's upsert names (ON CONFLICT). The global UNIQUE (name)
-- stays until 0013 (post-deploy): the previous release's upsert says ON CONFLICT (name), which
-- fails without it. Until then a name taken in another tenant is still refused.

SET LOCAL lock_timeout = '10s';

-- Jobs are few (one row per schedule): the build holds the table's SHARE lock for milliseconds.
CREATE UNIQUE INDEX jobs_tenant_name_idx ON pgsched.jobs ((coalesce(tenant, '')), name);
