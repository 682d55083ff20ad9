-- aigate's schema. Each `-- migration: N` section runs once, in order, inside one
-- transaction that also sets `PRAGMA user_version = N`. Append new sections; never edit
-- a released one. Times are Unix seconds (UTC).

-- migration: 1
CREATE TABLE tiers (
    name            TEXT PRIMARY KEY,
    rpm             INTEGER,                    -- requests per minute per key; NULL = unlimited
    concurrency     INTEGER,                    -- requests in flight per key; NULL = unlimited
    tokens_per_day  INTEGER,                    -- prompt + completion tokens per UTC day; NULL = unlimited
    models          TEXT NOT NULL DEFAULT '*',  -- comma-separated globs of allowed models
    is_admin        INTEGER NOT NULL DEFAULT 0, -- may use /admin/* and model management
    updated_at      INTEGER NOT NULL
);

INSERT INTO tiers (name, rpm, concurrency, tokens_per_day, models, is_admin, updated_at) VALUES
    ('free',  20,   1,    50000,   '*', 0, unixepoch()),
    ('pro',   300,  4,    2000000, '*', 0, unixepoch()),
    ('admin', NULL, NULL, NULL,    '*', 1, unixepoch());

CREATE TABLE users (
    id              INTEGER PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    password_hash   TEXT NOT NULL,              -- argon2id PHC string
    tier            TEXT NOT NULL DEFAULT 'free' REFERENCES tiers(name),
    disabled_at     INTEGER,
    token_version   INTEGER NOT NULL DEFAULT 0, -- bumped by passwd/disable: older JWTs stop working
    created_at      INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id              INTEGER PRIMARY KEY,
    key_hash        TEXT NOT NULL UNIQUE,       -- hex SHA-256 of the whole key; the key itself is never stored
    prefix          TEXT NOT NULL,              -- non-secret display prefix, e.g. aig_Xk3fQ2ab
    name            TEXT,
    user_id         INTEGER REFERENCES users(id),
    tier            TEXT NOT NULL DEFAULT 'free' REFERENCES tiers(name),
    rpm             INTEGER,                    -- per-key overrides of the tier's limits; NULL = the tier's
    concurrency     INTEGER,
    tokens_per_day  INTEGER,
    models          TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    revoked_at      INTEGER,
    last_used_at    INTEGER,
    rotated_from    INTEGER REFERENCES api_keys(id)
);
CREATE INDEX api_keys_user ON api_keys(user_id);

-- One row per UTC day, key, user and model; the gate adds to it in batches.
-- key_id 0 means "no key" (a JWT caller); user '' means "no user".
CREATE TABLE usage (
    day                 INTEGER NOT NULL,       -- Unix day: seconds / 86400
    key_id              INTEGER NOT NULL DEFAULT 0,
    user                TEXT NOT NULL DEFAULT '',
    model               TEXT NOT NULL DEFAULT '',
    requests            INTEGER NOT NULL DEFAULT 0,
    prompt_tokens       INTEGER NOT NULL DEFAULT 0,
    completion_tokens   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key_id, user, model)
) WITHOUT ROWID;

-- Authentication failures and admin actions.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    ip          TEXT,
    reason      TEXT,
    key_prefix  TEXT,
    user        TEXT,
    detail      TEXT
);
CREATE INDEX audit_at ON audit(at);

-- migration: 2
-- The model servers behind the gate (`aigate host`). The CLI writes name .. created_at
-- (with an audit row); the gate writes back what it observes (state .. seen_at), without
-- one. A row the gate has not written for a while is shown as `unknown`.
CREATE TABLE hosts (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    url             TEXT NOT NULL UNIQUE,       -- canonical http://host:port (host lowercased)
    kind            TEXT NOT NULL DEFAULT 'ollama' CHECK (kind IN ('ollama', 'openai')),
    slots           INTEGER NOT NULL DEFAULT 1 CHECK (slots BETWEEN 1 AND 1024),
    draining        INTEGER NOT NULL DEFAULT 0, -- no new requests; those in flight finish
    created_at      INTEGER NOT NULL,
    state           TEXT CHECK (state IN ('up', 'down')), -- the gate's last verdict; NULL = never seen
    loaded_models   TEXT NOT NULL DEFAULT '[]', -- JSON array of model names (/api/ps)
    in_flight       INTEGER NOT NULL DEFAULT 0, -- requests the gate had on the host
    seen_at         INTEGER                     -- when the gate last wrote the three above
);

-- Options a client may not choose for a model, because a different value makes Ollama
-- reload it. The model is normalized (`:latest` added) and compared as Ollama does,
-- without regard to case.
CREATE TABLE model_pins (
    model           TEXT NOT NULL PRIMARY KEY COLLATE NOCASE,
    num_ctx         INTEGER CHECK (num_ctx > 0),
    keep_alive      TEXT,                       -- as the operator wrote it: 30m, 0, -1, forever
    keep_alive_secs INTEGER,                    -- the same in seconds; -1 = never unload
    updated_at      INTEGER NOT NULL,
    CHECK ((keep_alive IS NULL) = (keep_alive_secs IS NULL)),
    CHECK (num_ctx IS NOT NULL OR keep_alive IS NOT NULL)
);

-- migration: 3
-- How the gate's queue treats a tier's requests while they wait for a free slot on a
-- host. The store keeps the values in range; the checks keep what the queue relies on.
-- Higher is served first.
ALTER TABLE tiers ADD COLUMN priority   INTEGER NOT NULL DEFAULT 0;
-- Share of the slots within one priority.
ALTER TABLE tiers ADD COLUMN weight     INTEGER NOT NULL DEFAULT 1 CHECK (weight >= 1);
-- Seconds a request may wait for a slot; NULL = no bound.
ALTER TABLE tiers ADD COLUMN max_wait   INTEGER CHECK (max_wait > 0);
-- Requests one user (or one key without a user) may have waiting; NULL = no bound,
-- 0 = refused at once when no slot is free.
ALTER TABLE tiers ADD COLUMN max_queued INTEGER CHECK (max_queued >= 0);

-- A tier created later gets the defaults above, as its other limits start unlimited.
UPDATE tiers SET priority = 0,  weight = 1, max_wait = 60,   max_queued = 4    WHERE name = 'free';
UPDATE tiers SET priority = 10, weight = 1, max_wait = 300,  max_queued = 32   WHERE name = 'pro';
UPDATE tiers SET priority = 20, weight = 1, max_wait = NULL, max_queued = NULL WHERE name = 'admin';
