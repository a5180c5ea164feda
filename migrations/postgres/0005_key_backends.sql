-- The PostgreSQL twin of migrations/sqlite/0005_key_backends.sql: each key
-- records the backend that holds its private half and, for a key held in a
-- token, the reference to it (its CKA_ID) while it may still sign.
ALTER TABLE keys ADD COLUMN backend TEXT NOT NULL DEFAULT 'software';
ALTER TABLE keys ADD COLUMN backend_ref TEXT;
-- 0001's unnamed table CHECK, named keys_check by PostgreSQL.
ALTER TABLE keys DROP CONSTRAINT keys_check;
ALTER TABLE keys ADD CONSTRAINT keys_private_held_while_signing
    CHECK ((state IN ('pending', 'active')) = (sealed_private IS NOT NULL OR backend_ref IS NOT NULL));
ALTER TABLE keys ADD CONSTRAINT keys_one_private_form
    CHECK (sealed_private IS NULL OR backend_ref IS NULL);
ALTER TABLE keys ADD CONSTRAINT keys_ref_matches_backend
    CHECK ((backend = 'software') = (backend_ref IS NULL) OR state NOT IN ('pending', 'active'));
