-- Backup files on the primary, so any node can list, verify, download and restore any backup and losing a
-- node's disk loses no backup. system_backups keeps one row per backup (metadata and manifest summary);
-- the file itself is stored in backup_chunks, in pieces of about 1 MiB, under an upload id.
--
-- An upload is one transaction: its chunks (COPY, under a fresh upload_id), then the row pointing at them
-- (upload_id, stored_*), and the chunks of the copy it replaces deleted. Until it commits readers see no
-- stored copy (or the previous one), so an interrupted upload never looks complete and leaves nothing behind.

CREATE TABLE {schema}.backup_chunks (
    upload_id uuid NOT NULL,
    idx       integer NOT NULL,           -- 0, 1, 2, ... in file order
    backup_id text NOT NULL,
    data      bytea NOT NULL,
    PRIMARY KEY (upload_id, idx)
);
-- The blocks are zstd-compressed or encrypted already: no TOAST compression attempt (it would only burn CPU).
ALTER TABLE {schema}.backup_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE INDEX backup_chunks_backup_idx ON {schema}.backup_chunks (backup_id);

ALTER TABLE {schema}.system_backups
    ADD COLUMN upload_id     uuid,         -- the complete copy on the primary; NULL: the file is not stored here
    ADD COLUMN stored_chunks integer,
    ADD COLUMN stored_bytes  bigint,
    ADD COLUMN stored_sha256 text,         -- SHA-256 of the whole file, checked after a download
    ADD COLUMN stored_by     text,         -- the node that uploaded it (its retention prunes it)
    ADD COLUMN stored_at     timestamptz;
