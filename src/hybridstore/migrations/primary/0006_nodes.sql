-- Every node sharing this primary writes a heartbeat row here (hybridstore.node.heartbeat), so an operator sees
-- all of them from any one: who runs, where, which version, in what state, how much each still has to push.
-- interval_s is the node's own heartbeat interval: a reader calls a node stale after 3 intervals of silence.

CREATE TABLE {schema}.nodes (
    node_id        text PRIMARY KEY,
    host           text NOT NULL,
    version        text NOT NULL,
    started_at     timestamptz NOT NULL,
    last_heartbeat timestamptz NOT NULL,
    interval_s     real NOT NULL,
    state          text NOT NULL,          -- the node's overall health, or 'stopped' after a clean shutdown
    outbox_depth   bigint NOT NULL DEFAULT 0,
    last_push      timestamptz,
    last_pull      timestamptz
);
