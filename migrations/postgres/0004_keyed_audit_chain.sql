-- The keyed audit chain (DESIGN §4): each new record names the chain key
-- (HMAC-SHA-256, derived from the master key) that MACs it. Records already
-- stored keep NULL here: they are the unkeyed SHA-256 chain of earlier
-- versions, verified as before and bound by the first keyed record, which
-- MACs the last of their hashes.
ALTER TABLE audit ADD COLUMN chain_key TEXT;
