-- The same schema for a cluster, for users who outgrow one server (not applied by the local
-- stack or the tests, which have one engine; the tests check that it parses and stays in step
-- with schema.sql). Apply it instead of schema.sql, once, on any node:
--
--   clickhouse-client --multiquery < clickhouse/cluster.sql
--
-- Layout: every table of schema.sql becomes `<name>_local` (Replicated*MergeTree, one replica
-- set per shard) plus `<name>` (Distributed over the local tables), except the sink's
-- bookkeeping tables at the end (one replica set across the cluster, under their own names).
-- Queries, the Grafana panels and clickstream-top keep reading `clickstream.<name>` unchanged.
-- The MVs read the local events table and write the local rollups, so each shard aggregates
-- its own events.
--
-- * Sharding key: cityHash64(session_id), so all events of a session land on one shard and the
--   per-session rollup is complete there; uniq/uniqExact states merge across shards at query
--   time through the Distributed tables.
-- * Exactly-once: Replicated tables deduplicate inserts through Keeper (replicated_deduplication
--   _window, default 1000 or more); the sink should insert into `events` with
--   distributed_foreground_insert = 1 (formerly insert_distributed_sync) so that its
--   insert_deduplication_token reaches the shards in the same request, or insert into
--   `events_local` of a chosen shard directly.
-- * Macros {cluster}, {shard}, {replica} come from each server's config (<macros>).
-- * Users (users.sql) are per server unless user_directories has a `replicated` storage.

CREATE DATABASE IF NOT EXISTS clickstream ON CLUSTER '{cluster}';

CREATE TABLE IF NOT EXISTS clickstream.events_local ON CLUSTER '{cluster}'
(
    event_id        UUID,
    event_time      DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    user_id         String CODEC(ZSTD(1)),
    session_id      UUID,
    event_type      LowCardinality(String),
    page_url        LowCardinality(String),
    page_category   LowCardinality(String),
    referrer        LowCardinality(String),
    device_type     LowCardinality(String),
    browser         LowCardinality(String),
    country         LowCardinality(String),
    duration_ms     UInt32 CODEC(T64, ZSTD(1)),
    product_id      LowCardinality(Nullable(String)),
    price           Nullable(Decimal(12, 2)),
    quantity        Nullable(UInt16),
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64 CODEC(Delta, ZSTD(1)),
    kafka_timestamp DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/clickstream/events', '{replica}')
PARTITION BY toDate(event_time)
ORDER BY (event_type, event_time)
TTL toDateTime(event_time) + INTERVAL 90 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS clickstream.events ON CLUSTER '{cluster}' AS clickstream.events_local
ENGINE = Distributed('{cluster}', clickstream, events_local, cityHash64(session_id));

ALTER TABLE clickstream.events_local ON CLUSTER '{cluster}'
    ADD INDEX IF NOT EXISTS inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1;

-- Tables made before kafka_timestamp existed (schema.sql says why): the local table, then the
-- Distributed one, which must list the column too.
ALTER TABLE clickstream.events_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS kafka_timestamp DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)) AFTER kafka_offset;
ALTER TABLE clickstream.events ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS kafka_timestamp DateTime64(3, 'UTC') AFTER kafka_offset;

CREATE TABLE IF NOT EXISTS clickstream.events_1m_local ON CLUSTER '{cluster}'
(
    window_start    DateTime('UTC'),
    dimension       LowCardinality(String),
    value           LowCardinality(String),
    events          SimpleAggregateFunction(sum, UInt64),
    page_views      SimpleAggregateFunction(sum, UInt64),
    purchases       SimpleAggregateFunction(sum, UInt64),
    revenue         SimpleAggregateFunction(sum, Decimal(38, 2)),
    duration_ms_sum SimpleAggregateFunction(sum, UInt64),
    users           AggregateFunction(uniq, String),
    sessions        AggregateFunction(uniq, UUID)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/clickstream/events_1m', '{replica}')
PARTITION BY toYYYYMM(window_start)
ORDER BY (dimension, window_start, value)
TTL window_start + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS clickstream.events_1m ON CLUSTER '{cluster}' AS clickstream.events_1m_local
ENGINE = Distributed('{cluster}', clickstream, events_1m_local, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.events_1m_mv ON CLUSTER '{cluster}' TO clickstream.events_1m_local AS
SELECT
    toStartOfMinute(event_time) AS window_start,
    dim.1 AS dimension,
    dim.2 AS value,
    count() AS events,
    countIf(event_type = 'page_view') AS page_views,
    countIf(event_type = 'purchase') AS purchases,
    sum(if(event_type = 'purchase', coalesce(price, 0) * coalesce(quantity, 1), 0)) AS revenue,
    sum(duration_ms) AS duration_ms_sum,
    uniqState(user_id) AS users,
    uniqState(session_id) AS sessions
FROM clickstream.events_local
ARRAY JOIN [
    ('all', ''),
    ('event_type', toString(event_type)),
    ('device_type', toString(device_type)),
    ('country', toString(country)),
    ('referrer', toString(referrer)),
    ('page_url', toString(page_url))
] AS dim
GROUP BY window_start, dimension, value;

CREATE TABLE IF NOT EXISTS clickstream.pages_5m_local ON CLUSTER '{cluster}'
(
    window_start    DateTime('UTC'),
    page_url        LowCardinality(String),
    views           SimpleAggregateFunction(sum, UInt64),
    duration_ms_sum SimpleAggregateFunction(sum, UInt64),
    users           AggregateFunction(uniq, String)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/clickstream/pages_5m', '{replica}')
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, page_url)
TTL window_start + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS clickstream.pages_5m ON CLUSTER '{cluster}' AS clickstream.pages_5m_local
ENGINE = Distributed('{cluster}', clickstream, pages_5m_local, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.pages_5m_mv ON CLUSTER '{cluster}' TO clickstream.pages_5m_local AS
SELECT
    toStartOfFiveMinutes(event_time) AS window_start,
    page_url,
    count() AS views,
    sum(duration_ms) AS duration_ms_sum,
    uniqState(user_id) AS users
FROM clickstream.events_local
WHERE event_type = 'page_view'
GROUP BY window_start, page_url;

CREATE TABLE IF NOT EXISTS clickstream.sessions_local ON CLUSTER '{cluster}'
(
    session_id   UUID,
    user_id      SimpleAggregateFunction(any, String),
    device_type  SimpleAggregateFunction(any, LowCardinality(String)),
    first_event  SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_event   SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    events       SimpleAggregateFunction(sum, UInt64),
    page_views   SimpleAggregateFunction(sum, UInt64),
    pages        AggregateFunction(uniqExact, String),
    landing_page AggregateFunction(argMin, String, Tuple(DateTime64(3, 'UTC'), UUID)),
    exit_page    AggregateFunction(argMax, String, Tuple(DateTime64(3, 'UTC'), UUID)),
    revenue      SimpleAggregateFunction(sum, Decimal(38, 2)),
    converted    SimpleAggregateFunction(max, UInt8)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/clickstream/sessions', '{replica}')
PARTITION BY toDate(first_event)
ORDER BY session_id
TTL toDateTime(last_event) + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS clickstream.sessions ON CLUSTER '{cluster}' AS clickstream.sessions_local
ENGINE = Distributed('{cluster}', clickstream, sessions_local, cityHash64(session_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.sessions_mv ON CLUSTER '{cluster}' TO clickstream.sessions_local AS
SELECT
    session_id,
    any(user_id) AS user_id,
    any(device_type) AS device_type,
    min(event_time) AS first_event,
    max(event_time) AS last_event,
    count() AS events,
    countIf(event_type = 'page_view') AS page_views,
    uniqExactState(toString(page_url)) AS pages,
    argMinState(toString(page_url), (event_time, event_id)) AS landing_page,
    argMaxState(toString(page_url), (event_time, event_id)) AS exit_page,
    sum(if(event_type = 'purchase', coalesce(price, 0) * coalesce(quantity, 1), 0)) AS revenue,
    toUInt8(countIf(event_type = 'purchase') > 0) AS converted
FROM clickstream.events_local
GROUP BY session_id;

CREATE TABLE IF NOT EXISTS clickstream.funnel_5m_local ON CLUSTER '{cluster}'
(
    window_start DateTime('UTC'),
    sessions     AggregateFunction(uniqExact, UUID),
    viewed       AggregateFunction(uniqExact, UUID),
    carted       AggregateFunction(uniqExact, UUID),
    purchased    AggregateFunction(uniqExact, UUID)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/clickstream/funnel_5m', '{replica}')
PARTITION BY toYYYYMM(window_start)
ORDER BY window_start
TTL window_start + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS clickstream.funnel_5m ON CLUSTER '{cluster}' AS clickstream.funnel_5m_local
ENGINE = Distributed('{cluster}', clickstream, funnel_5m_local, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.funnel_5m_mv ON CLUSTER '{cluster}' TO clickstream.funnel_5m_local AS
SELECT
    toStartOfFiveMinutes(event_time) AS window_start,
    uniqExactState(session_id) AS sessions,
    uniqExactStateIf(session_id, event_type = 'page_view') AS viewed,
    uniqExactStateIf(session_id, event_type = 'add_to_cart') AS carted,
    uniqExactStateIf(session_id, event_type = 'purchase') AS purchased
FROM clickstream.events_local
GROUP BY window_start;

-- users_daily (issue 13): as in schema.sql, one row per (day, user_id) after merges.
CREATE TABLE IF NOT EXISTS clickstream.users_daily_local ON CLUSTER '{cluster}'
(
    day         Date,
    user_id     String CODEC(ZSTD(1)),
    events      SimpleAggregateFunction(sum, UInt64),
    purchases   SimpleAggregateFunction(sum, UInt64),
    revenue     SimpleAggregateFunction(sum, Decimal(38, 2)),
    sessions    AggregateFunction(uniq, UUID),
    first_event SimpleAggregateFunction(min, DateTime64(3, 'UTC'))
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/clickstream/users_daily', '{replica}')
PARTITION BY toYYYYMM(day)
ORDER BY (day, user_id)
TTL day + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS clickstream.users_daily ON CLUSTER '{cluster}' AS clickstream.users_daily_local
ENGINE = Distributed('{cluster}', clickstream, users_daily_local, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.users_daily_mv ON CLUSTER '{cluster}' TO clickstream.users_daily_local AS
SELECT
    toDate(event_time) AS day,
    user_id,
    count() AS events,
    countIf(event_type = 'purchase') AS purchases,
    sum(if(event_type = 'purchase', coalesce(price, 0) * coalesce(quantity, 1), 0)) AS revenue,
    uniqState(session_id) AS sessions,
    min(event_time) AS first_event
FROM clickstream.events_local
GROUP BY day, user_id;

CREATE VIEW IF NOT EXISTS clickstream.events_10m_hop ON CLUSTER '{cluster}' AS
SELECT
    hop_start AS window_start,
    hop_start + INTERVAL 10 MINUTE AS window_end,
    dimension,
    value,
    sum(events) AS events,
    sum(page_views) AS page_views,
    sum(purchases) AS purchases,
    sum(revenue) AS revenue,
    sum(duration_ms_sum) AS duration_ms_sum,
    uniqMerge(users) AS users,
    uniqMerge(sessions) AS sessions
FROM clickstream.events_1m
ARRAY JOIN [
    toStartOfFiveMinutes(window_start),
    toStartOfFiveMinutes(window_start) - INTERVAL 5 MINUTE
] AS hop_start
WHERE window_start >= {from:DateTime} - INTERVAL 5 MINUTE
  AND window_start < {to:DateTime} + INTERVAL 10 MINUTE
  AND hop_start >= {from:DateTime}
  AND hop_start < {to:DateTime}
GROUP BY hop_start, dimension, value;

-- Exactly-once support (sink): progress per (topic, partition), fed by the same INSERT as the
-- events on each shard; the sink reads it through the Distributed table on every assignment.
-- For the deduplication token to protect a replay, the sink must insert into one shard's
-- `events_local` (or with distributed_foreground_insert = 1): see the notes at the top.
CREATE TABLE IF NOT EXISTS clickstream.kafka_progress_local ON CLUSTER '{cluster}'
(
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    max_offset      SimpleAggregateFunction(max, Int64),
    rows            SimpleAggregateFunction(sum, UInt64)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/clickstream/kafka_progress', '{replica}')
ORDER BY (kafka_topic, kafka_partition)
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS clickstream.kafka_progress ON CLUSTER '{cluster}' AS clickstream.kafka_progress_local
ENGINE = Distributed('{cluster}', clickstream, kafka_progress_local);

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.kafka_progress_mv ON CLUSTER '{cluster}' TO clickstream.kafka_progress_local AS
SELECT kafka_topic, kafka_partition, max(kafka_offset) AS max_offset, count() AS rows
FROM clickstream.events_local
GROUP BY kafka_topic, kafka_partition;

ALTER TABLE clickstream.events_local ON CLUSTER '{cluster}'
    ADD INDEX IF NOT EXISTS kafka_offset_minmax kafka_offset TYPE minmax GRANULARITY 1;

-- The sink's bookkeeping (schema.sql, "Exactly-once support" and "Replays"): small tables
-- every sink and every `replay` must see, whichever node it connects to, so each is one
-- replica set across the whole cluster (no {shard} in the path; the replica name
-- '{shard}-{replica}' is unique across shards even where replica macros repeat in each),
-- under its own name (no Distributed table). The sink's start-up check needs
-- kafka_pending_rebuilds; kafka_replay_steps tells it of replays. Replication is
-- asynchronous: a sink taking a partition over on another node may read a record a moment
-- old (see the README, "A ClickHouse cluster").
CREATE TABLE IF NOT EXISTS clickstream.kafka_pending_rebuilds ON CLUSTER '{cluster}'
(
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    repair_id       UInt64,
    rollup          LowCardinality(String),
    key             String,
    noted_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/clickstream/kafka_pending_rebuilds', '{shard}-{replica}')
ORDER BY (kafka_topic, kafka_partition, repair_id, rollup, key);

CREATE TABLE IF NOT EXISTS clickstream.kafka_replays ON CLUSTER '{cluster}'
(
    replay_id        UInt64,
    kafka_topic      LowCardinality(String),
    kafka_group      String,
    kafka_partition  Int32,
    from_offset      Int64,
    rows             UInt64,
    committed_before Int64,
    committed_after  Int64,
    planned_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/clickstream/kafka_replays', '{shard}-{replica}')
ORDER BY (kafka_topic, replay_id, kafka_partition);

CREATE TABLE IF NOT EXISTS clickstream.kafka_replay_steps ON CLUSTER '{cluster}'
(
    replay_id   UInt64,
    kafka_topic LowCardinality(String),
    step        LowCardinality(String),
    at          DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/clickstream/kafka_replay_steps', '{shard}-{replica}')
ORDER BY (kafka_topic, replay_id);

CREATE TABLE IF NOT EXISTS clickstream.kafka_replay_keys ON CLUSTER '{cluster}'
(
    replay_id UInt64,
    rollup    LowCardinality(String),
    key       String
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/clickstream/kafka_replay_keys', '{shard}-{replica}')
ORDER BY (replay_id, rollup, key)
TTL toDateTime(intDiv(replay_id, 1000)) + INTERVAL 30 DAY;

CREATE TABLE IF NOT EXISTS clickstream.ops_leases ON CLUSTER '{cluster}'
(
    kafka_topic LowCardinality(String),
    run_id      UUID,
    command     LowCardinality(String),
    host        String,
    pid         UInt32,
    scope       String,
    at          DateTime64(3, 'UTC') DEFAULT now64(3),
    released    UInt8 DEFAULT 0
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/clickstream/ops_leases', '{shard}-{replica}')
ORDER BY (kafka_topic, run_id)
TTL toDateTime(at) + INTERVAL 7 DAY;

CREATE TABLE IF NOT EXISTS clickstream.dead_letter_replays ON CLUSTER '{cluster}'
(
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    reason          LowCardinality(String),
    replayed_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/clickstream/dead_letter_replays', '{shard}-{replica}')
ORDER BY (kafka_topic, kafka_partition, kafka_offset);
