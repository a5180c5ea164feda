-- Keys of every set. Times are unix seconds (UTC). The private half is kept
-- only while the key may still sign (pending, active), and only sealed.
CREATE TABLE keys (
    kid            TEXT    PRIMARY KEY,
    set_name       TEXT    NOT NULL,
    alg            TEXT    NOT NULL CHECK (alg IN ('RS384', 'ES384')),
    version        INTEGER NOT NULL CHECK (version >= 1),
    state          TEXT    NOT NULL CHECK (state IN ('pending', 'active', 'retiring', 'retired', 'revoked')),
    public_jwk     TEXT    NOT NULL,
    sealed_private BLOB,
    created_at     INTEGER NOT NULL,
    publish_at     INTEGER NOT NULL,
    activate_at    INTEGER,
    deactivate_at  INTEGER,
    retire_at      INTEGER,
    emergency      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (set_name, alg, version),
    CHECK ((state IN ('pending', 'active')) = (sealed_private IS NOT NULL))
);

-- DESIGN rule 2 enforced by the database itself: a second active (or a second
-- pending) key for one (set, alg) cannot be committed, whatever the code does.
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
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    action     TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    uid        INTEGER,
    gid        INTEGER,
    pid        INTEGER,
    exe        TEXT,
    client_id  TEXT,
    audience   TEXT,
    kid        TEXT,
    jti        TEXT,
    detail     TEXT,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL
);
