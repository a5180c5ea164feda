-- The keys the lifecycle tick looks at every few seconds (Store::live_keys):
-- retired and revoked keys accumulate forever, so the tick must not scan
-- them. Together with UNIQUE (set_name, alg, version) for the highest
-- version per (set, alg), this keeps the tick's reads proportional to the
-- live keys.
CREATE INDEX keys_live ON keys (set_name, alg, version)
    WHERE state IN ('pending', 'active', 'retiring');
