-- Users of the clickstream database, created with SQL-driven access control, each with the
-- least it needs.
--
-- Applied by docker compose after schema.sql (a ClickHouse server whose default user has
-- access_management = 1: CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT=1 in the official image), then
-- deploy/clickhouse/03-passwords.sh sets the passwords from .env. NOT applied by the local
-- stack: the chDB engine behind scripts/clickhouse_http.py refuses CREATE USER / GRANT
-- (ACCESS_DENIED). The tests check that every statement parses, that every setting named
-- exists, and that the sink's grants are exactly what it runs (every statement the sink sent
-- in a test run, plus what the materialized views fed by `events` write; nothing more).
--
-- The passwords below are placeholders, replaced at the first start (03-passwords.sh). On a
-- server of your own: CREATE the users with your passwords, or ALTER USER ... IDENTIFIED BY.

-- The sink ---------------------------------------------------------------------------------
CREATE USER IF NOT EXISTS clickstream_sink
    IDENTIFIED WITH sha256_password BY 'clickstream-sink-change-me'
    DEFAULT DATABASE clickstream;
-- INSERT: the events. SELECT: the stored-offset checks (exactly once). ALTER DELETE: the
-- lightweight DELETE that removes what a refused insert left behind before it is retried.
GRANT INSERT, SELECT, ALTER DELETE ON clickstream.events TO clickstream_sink;
-- The progress rollup answers "is anything of this partition stored?".
GRANT SELECT ON clickstream.kafka_progress TO clickstream_sink;
-- The rollup rebuilds it owes after a refused insert: recorded before the rows are deleted,
-- read by the next owner of the partition, deleted once done.
GRANT SELECT, INSERT, ALTER DELETE ON clickstream.kafka_pending_rebuilds TO clickstream_sink;
-- Replays (`clickstream-sink replay`): the sink does not start while one is unfinished, and
-- the newest one scopes its deduplication tokens. (The replay commands themselves run as an
-- administrator: they delete rows of `events` and of every rollup.)
GRANT SELECT ON clickstream.kafka_replay_steps TO clickstream_sink;
-- The materialized views fed by `events` write their targets in the inserting user's name
-- when they run with SQL SECURITY INVOKER (views without an SQL SECURITY clause on servers
-- before 24.4, or with ignore_empty_sql_security_in_create_view_query); with the DEFINER
-- default of newer servers these grants are unused but harmless.
-- ALTER DELETE and INSERT: after a refused insert whose rows reached the views fed before
-- the failing one, the sink rebuilds the rollup keys those rows touch from `events` (the
-- rollup's rows of those keys deleted, the view's SELECT inserted).
GRANT INSERT, ALTER DELETE ON clickstream.events_1m TO clickstream_sink;
GRANT INSERT, ALTER DELETE ON clickstream.pages_5m TO clickstream_sink;
GRANT INSERT, ALTER DELETE ON clickstream.sessions TO clickstream_sink;
GRANT INSERT, ALTER DELETE ON clickstream.funnel_5m TO clickstream_sink;
GRANT INSERT, ALTER DELETE ON clickstream.kafka_progress TO clickstream_sink;
-- users_daily (issue 13, the user-behaviour rollup).
GRANT INSERT, ALTER DELETE ON clickstream.users_daily TO clickstream_sink;
-- The start-up check: does the table exist with the engine settings exactly once needs, and
-- which columns does it have now (the sink follows benign ALTERs).
GRANT SELECT ON system.tables TO clickstream_sink;
GRANT SELECT ON system.columns TO clickstream_sink;
-- system.tables and system.columns show a user only what it has a privilege on: the sink must
-- see every materialized view `events` feeds (and the columns of those it rebuilds), or it
-- could neither rebuild their rollups nor find the rows a view refuses. It stops at start
-- when it cannot see one, naming it: grant the same on a view of your own (or on
-- clickstream.*). Metadata only: no data of the views.
GRANT SHOW TABLES, SHOW COLUMNS ON clickstream.events_1m_mv TO clickstream_sink;
GRANT SHOW TABLES, SHOW COLUMNS ON clickstream.pages_5m_mv TO clickstream_sink;
GRANT SHOW TABLES, SHOW COLUMNS ON clickstream.sessions_mv TO clickstream_sink;
GRANT SHOW TABLES, SHOW COLUMNS ON clickstream.funnel_5m_mv TO clickstream_sink;
GRANT SHOW TABLES, SHOW COLUMNS ON clickstream.users_daily_mv TO clickstream_sink;
GRANT SHOW TABLES, SHOW COLUMNS ON clickstream.kafka_progress_mv TO clickstream_sink;
-- The deduplication-window guard reads the server's default windows (README, "Freshness and the
-- deduplication-window guard").
GRANT SELECT ON system.merge_tree_settings TO clickstream_sink;

-- Grafana and ad-hoc queries: read only, and bounded ---------------------------------------
-- readonly = 2 (not 1) because the Grafana plugin and clickhouse-client send per-query
-- settings, which readonly = 1 rejects; data and schema stay read-only either way. The
-- constraints stop the user from raising the limits in those per-query settings (MIN 1 as
-- well: 0 would mean "no limit"), so anonymous dashboard viewers cannot turn a heavy query
-- into a denial of service. Grafana's own query timeout is 60 s as well.
CREATE SETTINGS PROFILE IF NOT EXISTS clickstream_reader_profile
    SETTINGS readonly = 2,
             max_execution_time = 60 MIN 1 MAX 60,
             max_memory_usage = 2000000000 MIN 1 MAX 2000000000,
             max_result_rows = 100000 MIN 1 MAX 100000,
             max_concurrent_queries_for_user = 20 MIN 1 MAX 20;
CREATE USER IF NOT EXISTS clickstream_reader
    IDENTIFIED WITH sha256_password BY 'clickstream-reader-change-me'
    DEFAULT DATABASE clickstream
    SETTINGS PROFILE 'clickstream_reader_profile';
GRANT SELECT ON clickstream.* TO clickstream_reader;
-- "Parts per table" on the Pipeline health dashboard.
GRANT SELECT ON system.parts TO clickstream_reader;
-- And in total: the two dashboards refresh about 25 panels every 5 s (300 queries a minute per
-- open dashboard); this allows a few viewers at once and caps what any number of them costs.
-- A viewer over the quota sees QUOTA_EXCEEDED in the panels until the minute ends; raise it
-- with ALTER QUOTA for more viewers.
CREATE QUOTA IF NOT EXISTS clickstream_reader_quota
    FOR INTERVAL 1 minute MAX queries = 1500, execution_time = 600,
    FOR INTERVAL 1 hour MAX read_rows = 50000000000
    TO clickstream_reader;
