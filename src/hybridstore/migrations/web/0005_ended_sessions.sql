-- Admin sessions ended by a logout: a copied cookie of one stays refused after the server restarts, until it
-- expires (rows past their expiry are dropped when the next session ends).

CREATE TABLE ended_sessions (
    sid     TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
