-- TPM binding and attestation challenges, sqlite. Keep in step with ../postgres/.
-- Binary TPM structures are stored as lowercase hex TEXT (small; one type on both backends).

-- A device enrolled with a TPM: its endorsement key (EK) and attestation key (AK), bound
-- once at enrollment by credential activation. One EK belongs to at most one device.
ALTER TABLE devices ADD COLUMN ek_sha256 TEXT;
ALTER TABLE devices ADD COLUMN ek_public TEXT;
ALTER TABLE devices ADD COLUMN ak_public TEXT;
CREATE UNIQUE INDEX devices_ek ON devices (ek_sha256);

-- A bootstrap token may re-enroll an existing device (its TPM must be the one bound).
ALTER TABLE bootstrap_tokens ADD COLUMN reenroll_device TEXT;

-- Pending credential activations: the secret (as its SHA-256) that only the TPM holding both
-- the EK and the AK can recover. Single-use, short-lived, tied to one bootstrap token.
CREATE TABLE tpm_activations (
    id            TEXT PRIMARY KEY,
    token_jti     TEXT NOT NULL,
    ek_sha256     TEXT NOT NULL,
    ek_public     TEXT NOT NULL,
    ak_public     TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT
);
CREATE INDEX tpm_activations_expiry ON tpm_activations (expires_at);

-- Attestation nonces: single-use, bound to one device, short-lived.
CREATE TABLE attest_nonces (
    nonce      TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL REFERENCES devices (id),
    pcrs       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX attest_nonces_expiry ON attest_nonces (expires_at);
