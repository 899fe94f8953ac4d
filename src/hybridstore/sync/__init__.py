"""Moving ops between tiers: outbox push to the primary, journal replay into SQLite."""
