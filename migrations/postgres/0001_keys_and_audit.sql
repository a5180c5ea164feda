-- The PostgreSQL twin of migrations/sqlite/0001_keys_and_audit.sql: the same
-- tables, columns and constraints. Times are unix seconds (UTC) as BIGINT.
-- The private half is kept only while the key may still sign (pending,
-- active), and only sealed.
CREATE TABLE keys (
    kid            TEXT    PRIMARY KEY,
    set_name       TEXT    NOT NULL,
    alg            TEXT    NOT NULL CHECK (alg IN ('RS384', 'ES384')),
    version        BIGINT  NOT NULL CHECK (version >= 1),
    state          TEXT    NOT NULL CHECK (state IN ('pending', 'active', 'retiring', 'retired', 'revoked')),
    public_jwk     TEXT    NOT NULL,
    sealed_private BYTEA,
    created_at     BIGINT  NOT NULL,
    publish_at     BIGINT  NOT NULL,
    activate_at    BIGINT,
    deactivate_at  BIGINT,
    retire_at      BIGINT,
    emergency      BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (set_name, alg, version),
    CHECK ((state IN ('pending', 'active')) = (sealed_private IS NOT NULL))
);

-- DESIGN rule 2 enforced by the database itself: a second active (or a second
-- pending) key for one (set, alg) cannot be committed, whatever the code does
-- and however many replicas race.
CREATE UNIQUE INDEX keys_one_active  ON keys (set_name, alg) WHERE state = 'active';
CREATE UNIQUE INDEX keys_one_pending ON keys (set_name, alg) WHERE state = 'pending';

-- Small facts about the store: the master key fingerprint, the key revision.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (name, value) VALUES ('revision', '0');

-- Append-only, hash-chained audit trail (DESIGN §4).
CREATE TABLE audit (
    seq        BIGINT  PRIMARY KEY,
    at         BIGINT  NOT NULL,
    action     TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    uid        BIGINT,
    gid        BIGINT,
    pid        BIGINT,
    exe        TEXT,
    client_id  TEXT,
    audience   TEXT,
    kid        TEXT,
    jti        TEXT,
    detail     TEXT,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL
);
