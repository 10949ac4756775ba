-- The policy bundle's sequence. PostgreSQL. Keep in step with ../sqlite/.
-- Each time a replica activates a policy set whose content differs from the last one
-- activated (by any replica), the sequence goes up (by one, and at least to the time in
-- milliseconds, so that a registry restored from a backup still numbers above what agents
-- hold); a set activated again later (a rollback to an old commit) gets a new, higher number. Signed bundles carry it, and agents
-- refuse a bundle with a lower number than the one they hold: an old bundle replayed cannot
-- roll their policy back, whatever the replicas' clocks say.
CREATE TABLE policy_sequence (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    sequence     BIGINT NOT NULL,
    content_hash TEXT NOT NULL,
    version      TEXT NOT NULL,
    changed_at   BIGINT NOT NULL
);
INSERT INTO policy_sequence (id, sequence, content_hash, version, changed_at) VALUES (1, 0, '', '', 0);
