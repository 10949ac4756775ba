-- Decisions made by sidecars, uploaded from their spools. PostgreSQL. Keep in step with ../sqlite/.
-- `origin` says where a decision was made: by the server (`/v1/authorize`), or by the sending
-- or receiving sidecar of a message. `upload_id` (`<device id>/<the sidecar's decision id>`)
-- makes a retried upload record each decision once; NULL for the server's own decisions.

ALTER TABLE decision_log ADD COLUMN origin TEXT NOT NULL DEFAULT 'server'
    CHECK (origin IN ('server', 'sender', 'receiver'));
ALTER TABLE decision_log ADD COLUMN upload_id TEXT;
CREATE UNIQUE INDEX decision_log_upload ON decision_log (upload_id);
