-- When a device's TPM was bound (TPM enrollment or re-enrollment), sqlite. Keep in step with
-- ../postgres/. A TPM device must pass its first attestation within the attestation period
-- (plus grace) of this time, or the stale sweep marks it stale: a TPM device that never
-- attests does not keep the trust its TPM binding gives it. NULL for devices without a TPM.

ALTER TABLE devices ADD COLUMN tpm_bound_at BIGINT;
CREATE INDEX devices_unattested ON devices (attestation, tpm_bound_at);
