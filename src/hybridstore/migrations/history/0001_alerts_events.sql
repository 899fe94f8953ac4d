-- The recovery service's alerts and strategy events. Files written before this migration existed hold these
-- tables already at user_version 0: hence IF NOT EXISTS, so this first step is a no-op for them.

CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL, node_id TEXT,
    details TEXT NOT NULL, raised_at REAL NOT NULL, resolved_at REAL, resolution TEXT
);

CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, strategy TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL,
    outcome TEXT NOT NULL, summary TEXT NOT NULL, details TEXT NOT NULL
);
