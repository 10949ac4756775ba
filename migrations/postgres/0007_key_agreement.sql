-- Key-agreement certificates (ECDH P-256, keyUsage keyAgreement only), each issued together
-- with a device certificate: peers encrypt messages to them. They are kept apart from
-- `certificates`, whose serials authenticate callers, so that no lookup for authentication
-- can find one. A key-agreement certificate shares its device certificate's standing: it is
-- revoked (and on the CRL) exactly when that certificate is.
CREATE TABLE key_agreement_certificates (
    serial                 TEXT PRIMARY KEY,
    device_id              TEXT NOT NULL REFERENCES devices (id),
    device_serial          TEXT NOT NULL UNIQUE REFERENCES certificates (serial),
    certificate_pem        TEXT NOT NULL,
    device_certificate_pem TEXT NOT NULL,
    not_after              BIGINT NOT NULL,
    -- Delivery endpoints the device advertised with it (JSON list of URLs).
    endpoints              TEXT NOT NULL,
    issued_at              BIGINT NOT NULL
);
CREATE INDEX key_agreement_certificates_device ON key_agreement_certificates (device_id);
