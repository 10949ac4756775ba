-- Policy decision log, SQLite. Keep in step with ../postgres/.
-- Every decision the server answers is committed here first; the table is append-only.

CREATE TABLE decision_log (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    at              BIGINT NOT NULL,
    caller          TEXT NOT NULL,
    principal       TEXT NOT NULL,
    action          TEXT NOT NULL,
    resource        TEXT NOT NULL,
    context         TEXT NOT NULL,
    decision        TEXT NOT NULL CHECK (decision IN ('allow', 'deny')),
    policies        TEXT NOT NULL,
    errors          TEXT NOT NULL,
    policy_version  TEXT NOT NULL,
    -- Shadow mode: what the candidate set decided (NULL when no candidate is loaded).
    shadow_decision TEXT CHECK (shadow_decision IN ('allow', 'deny')),
    shadow_policies TEXT,
    shadow_version  TEXT
);
CREATE INDEX decision_log_principal ON decision_log (principal, id);
CREATE TRIGGER decision_log_no_update BEFORE UPDATE ON decision_log
BEGIN SELECT RAISE(ABORT, 'decision_log is append-only'); END;
CREATE TRIGGER decision_log_no_delete BEFORE DELETE ON decision_log
BEGIN SELECT RAISE(ABORT, 'decision_log is append-only'); END;
