-- Device registry, SQLite. Times are Unix seconds. Keep in step with ../postgres/.

CREATE TABLE bootstrap_tokens (
    jti          TEXT PRIMARY KEY,
    zone         TEXT NOT NULL,
    labels       TEXT NOT NULL,
    device_class TEXT,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT,
    device_id    TEXT
);

CREATE TABLE devices (
    id                TEXT PRIMARY KEY,
    spiffe_id         TEXT NOT NULL UNIQUE,
    zone              TEXT NOT NULL,
    device_class      TEXT,
    labels            TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    revoked_at        BIGINT,
    revocation_reason TEXT,
    -- The newest certificate, set in the transaction that issues it.
    current_serial    TEXT NOT NULL,
    current_not_after BIGINT NOT NULL
);
CREATE INDEX devices_zone_id ON devices (zone, id);
CREATE INDEX devices_status_id ON devices (status, id);

CREATE TABLE certificates (
    serial            TEXT PRIMARY KEY,
    device_id         TEXT NOT NULL REFERENCES devices (id),
    not_before        BIGINT NOT NULL,
    not_after         BIGINT NOT NULL,
    issued_at         BIGINT NOT NULL,
    revoked_at        BIGINT,
    revocation_reason TEXT
);
CREATE INDEX certificates_device ON certificates (device_id);
CREATE INDEX certificates_revoked ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;

-- Append-only: triggers refuse UPDATE and DELETE.
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- One row: the CRL number sequence and the latest CRL, shared by all replicas.
CREATE TABLE crl_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    crl_number  BIGINT NOT NULL,
    this_update BIGINT,
    der         BLOB
);
INSERT INTO crl_state (id, crl_number) VALUES (1, 0);
