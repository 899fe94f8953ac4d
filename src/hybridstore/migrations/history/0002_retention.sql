-- Retention: the history keeps the newest rows only (see RecoveryHistory.keep); these indexes make the pruning
-- and the newest-first reads cheap however long a node has run.

CREATE INDEX IF NOT EXISTS alerts_raised_at ON alerts (raised_at);
CREATE INDEX IF NOT EXISTS events_started_at ON events (started_at);
