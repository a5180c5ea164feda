-- The lifecycle lease (DESIGN §4): one row per lease name, held by one
-- replica until expires_at_ms (unix MILLISECONDS by the database clock).
-- Milliseconds, unlike the second-granular key times, so that a 15 s lease
-- renewed every few seconds is not shortened by up to a second by rounding.
CREATE TABLE lease (
    name          TEXT   PRIMARY KEY,
    holder        TEXT   NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
