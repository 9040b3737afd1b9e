-- The REST API's keys: who may call it, with which scope, on behalf of which tenant.
-- Only a SHA-256 digest of each key is stored; the key itself is shown once, at creation.

CREATE TABLE pgsched.api_keys (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL DEFAULT '',
    -- sha256 of the whole key string: a lookup by digest, never a comparison of secrets.
    key_hash   bytea NOT NULL UNIQUE CONSTRAINT api_key_hash_must_be_sha256 CHECK (length(key_hash) = 32),
    -- The first characters of the key, so people can tell keys apart in `pgsched keys list`.
    prefix     text NOT NULL,
    scope      text NOT NULL CONSTRAINT api_key_scope_must_be_read_write_or_admin
               CHECK (scope IN ('read', 'write', 'admin')),
    -- NULL: the key sees every row; otherwise only rows whose tenant column matches.
    tenant     text CONSTRAINT api_key_tenant_must_match_a_z_0_9_dot_dash_underscore_colon_max_63
               CHECK (tenant IS NULL OR tenant ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- A tenant's run list (newest first, keyset by id) without scanning other tenants' runs.
-- Partial: installations without tenants (tenant always NULL) keep it empty.
CREATE INDEX runs_tenant_idx ON pgsched.runs (tenant, id) WHERE tenant IS NOT NULL;
