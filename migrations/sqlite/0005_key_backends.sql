-- Key backends (DESIGN §5): each key records the backend that holds its
-- private half ('software' = sealed in this table, or the name of a
-- [backends.NAME] table of jwksd.toml) and, for a key held in a token, the
-- reference to it (its CKA_ID) while it may still sign. The "private half
-- held only while pending or active" rule now counts either form, so the
-- CHECK changes; SQLite cannot alter a CHECK, hence the table is rebuilt
-- (inside this migration's transaction) with its indexes.
CREATE TABLE keys_v5 (
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
    backend        TEXT    NOT NULL DEFAULT 'software',
    backend_ref    TEXT,
    UNIQUE (set_name, alg, version),
    -- Exactly one form of private half, and only while the key may sign.
    CHECK ((state IN ('pending', 'active')) = (sealed_private IS NOT NULL OR backend_ref IS NOT NULL)),
    CHECK (sealed_private IS NULL OR backend_ref IS NULL),
    CHECK ((backend = 'software') = (backend_ref IS NULL) OR state NOT IN ('pending', 'active'))
);
INSERT INTO keys_v5 (kid, set_name, alg, version, state, public_jwk, sealed_private, created_at,
                     publish_at, activate_at, deactivate_at, retire_at, emergency, backend, backend_ref)
    SELECT kid, set_name, alg, version, state, public_jwk, sealed_private, created_at,
           publish_at, activate_at, deactivate_at, retire_at, emergency, 'software', NULL
    FROM keys;
DROP TABLE keys;
ALTER TABLE keys_v5 RENAME TO keys;
CREATE UNIQUE INDEX keys_one_active  ON keys (set_name, alg) WHERE state = 'active';
CREATE UNIQUE INDEX keys_one_pending ON keys (set_name, alg) WHERE state = 'pending';
CREATE INDEX keys_live ON keys (set_name, alg, version)
    WHERE state IN ('pending', 'active', 'retiring');
