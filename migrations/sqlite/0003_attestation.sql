-- Attestation state of devices, sqlite. Keep in step with the other backend.
-- A device's registry standing (status: active/revoked) and its attestation health are
-- separate: revocation is an operator's act, attestation the verifier's finding.

ALTER TABLE devices ADD COLUMN attestation TEXT NOT NULL DEFAULT 'none'
    CHECK (attestation IN ('none', 'active', 'stale', 'quarantined'));
ALTER TABLE devices ADD COLUMN last_attested BIGINT;
ALTER TABLE devices ADD COLUMN attestation_reason TEXT;
CREATE INDEX devices_attestation ON devices (attestation, last_attested);

-- Every attestation result and state change per device; append-only.
CREATE TABLE attestations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id     TEXT NOT NULL REFERENCES devices (id),
    at            BIGINT NOT NULL,
    outcome       TEXT NOT NULL CHECK (outcome IN ('pass', 'fail', 'stale', 'released')),
    reason        TEXT NOT NULL,
    reference_set TEXT
);
CREATE INDEX attestations_device ON attestations (device_id, id);

-- One row per sweep period: the replica that inserts it runs that period's stale sweep.
CREATE TABLE sweep_claims (
    period     BIGINT PRIMARY KEY,
    claimed_by TEXT NOT NULL,
    claimed_at BIGINT NOT NULL
);
CREATE TRIGGER attestations_no_update BEFORE UPDATE ON attestations
BEGIN SELECT RAISE(ABORT, 'attestations is append-only'); END;
CREATE TRIGGER attestations_no_delete BEFORE DELETE ON attestations
BEGIN SELECT RAISE(ABORT, 'attestations is append-only'); END;
