-- Users of the clickstream database, created with SQL-driven access control.
--
-- Applied by docker compose after schema.sql (a ClickHouse server whose default user has
-- access_management = 1: CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT=1 in the official image). NOT
-- applied by the local stack: the chDB engine behind scripts/clickhouse_http.py refuses CREATE
-- USER / GRANT (ACCESS_DENIED), so there everything runs as `default`. The tests only check that
-- this file parses.
--
-- The passwords below are placeholders for a laptop: change them (ALTER USER ... IDENTIFIED BY)
-- before the server is reachable by anyone else, and give Grafana / the sink the new ones
-- (CLICKHOUSE_READER_PASSWORD, the sink's clickhouse password setting).

-- The sink: inserts events (the MVs fill the rollups with their definer's rights) and reads
-- what it needs for exactly-once (the events and the sink's progress table).
CREATE USER IF NOT EXISTS clickstream_sink
    IDENTIFIED WITH sha256_password BY 'clickstream-sink-change-me'
    DEFAULT DATABASE clickstream;
GRANT INSERT, SELECT ON clickstream.* TO clickstream_sink;

-- Grafana and ad-hoc queries: read only. readonly = 2 (not 1) because the Grafana plugin and
-- clickhouse-client send per-query settings, which readonly = 1 rejects; data and schema stay
-- read-only either way. system.parts is for the "Pipeline health" dashboard.
CREATE USER IF NOT EXISTS clickstream_reader
    IDENTIFIED WITH sha256_password BY 'clickstream-reader-change-me'
    DEFAULT DATABASE clickstream
    SETTINGS readonly = 2, max_execution_time = 60;
GRANT SELECT ON clickstream.* TO clickstream_reader;
GRANT SELECT ON system.parts TO clickstream_reader;
