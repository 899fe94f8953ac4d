-- Jobs started over HTTP (sync, backup, restore, import), so GET /api/v1/jobs/{id} answers after a restart.
-- A job still 'running' when its server stopped is marked 'interrupted' at the next start.

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    target      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    state       TEXT NOT NULL,             -- running, succeeded, failed, interrupted
    created_at  REAL NOT NULL,
    finished_at REAL,
    progress    TEXT NOT NULL DEFAULT '{}', -- JSON
    result      TEXT,                      -- JSON
    problem     TEXT                       -- JSON
);
CREATE INDEX jobs_by_created ON jobs (created_at);
