-- Operator tokens revoked before they expire (a deny-list by token id). PostgreSQL. Keep in step
-- with ../sqlite/. A row may be deleted once `forget_after` has passed: by then every token
-- with that id has expired (operator tokens live at most 7 days).
CREATE TABLE revoked_operator_tokens (
    jti          TEXT PRIMARY KEY,
    revoked_at   BIGINT NOT NULL,
    revoked_by   TEXT NOT NULL,
    forget_after BIGINT NOT NULL
);
