-- Clickstream schema. Idempotent: applied at every `scripts/stack up` and at the first start
-- of the docker compose ClickHouse. Every statement is IF NOT EXISTS.
--
-- Every object is written fully qualified (`clickstream.<name>`, also inside views): the tests
-- apply this file into a database of their own by renaming `clickstream.`.
--
--   events            raw events, one row per click (written by clickstream-sink)
--   events_1m         1-minute tumbling rollup per dimension value       ← events_1m_mv
--   pages_5m          5-minute tumbling rollup per page (page views)      ← pages_5m_mv
--   sessions          one row per session_id                              ← sessions_mv
--   funnel_5m         sessions with view / add-to-cart / purchase per 5 min ← funnel_5m_mv
--   events_10m_hop    10-minute hopping windows every 5 minutes (view over events_1m)
--
-- Users (insert-only sink, read-only reader) are in users.sql, the Replicated/Distributed variant
-- for a cluster in cluster.sql. What each rollup means and how to query it: README.md.

CREATE DATABASE IF NOT EXISTS clickstream;

-- One row per click event, written by clickstream-sink.
--
-- * ORDER BY (event_type, event_time): dashboard queries filter on a recent time range and
--   usually group or filter by event type; the time column inside each type keeps range scans
--   tight, and the low-cardinality type first compresses well.
-- * PARTITION BY day of event time: late events land in their own day's partition, the TTL
--   drops whole partitions, and a day is a sensible unit to detach or back up.
-- * event_time is event time (from the producer), kafka_timestamp the Kafka message's
--   timestamp (CreateTime or LogAppendTime, whichever the topic keeps; the time the sink read
--   the message for the rare message without one), inserted_at is when the row became
--   queryable. So `inserted_at - kafka_timestamp` is the pipeline latency (Kafka to
--   queryable) and `kafka_timestamp - event_time` the event's lateness (a client that sent it
--   hours later): two numbers, so one late event does not look like a slow pipeline.
-- * Codecs: Delta + ZSTD for the near-monotonic times and offsets, T64 for small integers;
--   LowCardinality for the dimensions the dashboards group by (a few dozen values each).
-- * TTL 90 days on the raw rows; the rollups below keep 400 days, so the dashboards' long
--   ranges outlive the raw data.
-- * kafka_topic/partition/offset make every row traceable to its message; with
--   exactly-once delivery each (topic, partition, offset) appears once.
-- * non_replicated_deduplication_window: the sink sends insert_deduplication_token with every
--   insert, and a replayed insert with a token seen in the last N inserts is dropped.
CREATE TABLE IF NOT EXISTS clickstream.events
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
ENGINE = MergeTree
PARTITION BY toDate(event_time)
ORDER BY (event_type, event_time)
TTL toDateTime(event_time) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- The pipeline-health queries select by insert time (`WHERE inserted_at >= ...`), which the
-- ORDER BY cannot serve; inserted_at grows with the parts, so a minmax skip index skips all but
-- the newest granules. An ALTER (idempotent) so that existing tables get it too.
ALTER TABLE clickstream.events
    ADD INDEX IF NOT EXISTS inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1;

-- Tables made before kafka_timestamp existed get it here (idempotent). Their older rows read
-- 1970-01-01 in it: the latency queries keep to rows with a kafka_timestamp. A sink still
-- works on a table without the column (it writes the columns the live table has).
ALTER TABLE clickstream.events
    ADD COLUMN IF NOT EXISTS kafka_timestamp DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)) AFTER kafka_offset;

-- ============================================================================================
-- Rollups: materialized views keyed on EVENT time (event_time), not insert time, so a late
-- event is added to the window it happened in, however late it arrives.
--
-- Rebuild declarations: after every view over `events`, a line
--   -- rebuild clickstream.<rollup>: <key column of the rollup> = <the same key from a raw row>
-- tells `clickstream-sink replay` how to make the rollup equal to the raw table again for the
-- keys a replayed range touches: it records those keys before deleting the range, then runs
--   ALTER TABLE <rollup> DELETE WHERE toString(<key>) IN <recorded keys>
--   INSERT INTO <rollup> SELECT ... FROM (<the view's own SELECT>) WHERE toString(<key>) IN <keys>
-- (a unit test fails for a view without one, and replay refuses to run).
--
-- How they stay correct:
-- * Each MV writes partial aggregates per insert block into an AggregatingMergeTree; rows with
--   the same key are combined by background merges, *eventually*. So every query on a rollup
--   aggregates again (sum() for SimpleAggregateFunction(sum), uniqMerge() for uniq states,
--   min/max/argMinMerge ...) and GROUP BYs the key: never read a rollup row as final.
-- * Exactly-once: the sink inserts with insert_deduplication_token and
--   deduplicate_blocks_in_dependent_materialized_views = 1. A non-replicated MergeTree only
--   deduplicates with a non-zero non_replicated_deduplication_window, and that holds for each
--   MV target too (the window of `events` does not cover them): so every rollup table has its
--   own window. MV output is deterministic for a given input block (no now(), no rand(), ties
--   broken by event_id), so a replayed block produces the same rollup block and is dropped.
-- * uniq() is approximate (adaptive sampling; exact up to 65536 distinct values per state, a
--   relative error of about 1-2 % above). The funnel uses uniqExact: its sets are small.
-- * Revenue everywhere is sum(price * quantity) over purchase events, quantity NULL = 1.
-- ============================================================================================

-- 1-minute tumbling windows, one row per (minute, dimension, value). `dimension` is one of
--   'all'         value ''       totals of the minute
--   'event_type'  'page_view', 'click', 'search', 'add_to_cart', 'purchase'
--   'device_type', 'country', 'referrer', 'page_url'
-- so "events by device in the last 15 minutes" reads ~15 × (number of devices) rows. The long
-- layout keeps the table tiny (tens of rows a minute, not one per dimension combination) and
-- lets unique users/sessions be merged per value and across minutes (hopping windows below).
-- page_url is here so that trending pages can use the hopping view over this table.
CREATE TABLE IF NOT EXISTS clickstream.events_1m
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
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (dimension, window_start, value)
TTL window_start + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.events_1m_mv TO clickstream.events_1m AS
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
FROM clickstream.events
ARRAY JOIN [
    ('all', ''),
    ('event_type', toString(event_type)),
    ('device_type', toString(device_type)),
    ('country', toString(country)),
    ('referrer', toString(referrer)),
    ('page_url', toString(page_url))
] AS dim
GROUP BY window_start, dimension, value;
-- rebuild clickstream.events_1m: window_start = toStartOfMinute(event_time)

-- 5-minute tumbling windows per page, page views only: views, unique viewers, time on page.
-- Average duration = duration_ms_sum / views. The dashboards' "top pages".
CREATE TABLE IF NOT EXISTS clickstream.pages_5m
(
    window_start    DateTime('UTC'),
    page_url        LowCardinality(String),
    views           SimpleAggregateFunction(sum, UInt64),
    duration_ms_sum SimpleAggregateFunction(sum, UInt64),
    users           AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, page_url)
TTL window_start + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.pages_5m_mv TO clickstream.pages_5m AS
SELECT
    toStartOfFiveMinutes(event_time) AS window_start,
    page_url,
    count() AS views,
    sum(duration_ms) AS duration_ms_sum,
    uniqState(user_id) AS users
FROM clickstream.events
WHERE event_type = 'page_view'
GROUP BY window_start, page_url;
-- rebuild clickstream.pages_5m: window_start = toStartOfFiveMinutes(event_time)

-- One row per session_id (after merges; query with GROUP BY session_id). Landing and exit
-- page are the pages of the first and last event, ties broken by event_id so that the result
-- does not depend on the order rows arrive in.
--
-- Partitioned by the day of first_event: partial rows of a session that crosses midnight sit
-- in two partitions and are combined by the query's GROUP BY, as always. Queries over a time
-- range pre-filter partial rows on last_event with a margin of one day (sessions are shorter
-- than that), then keep the sessions whose merged times fall in the range: see the README.
--
-- Session windows: `session_id` is the client's session. Sessionizing by inactivity (a new
-- session after 10 or 30 idle minutes) is a window-function query over a user's sessions
-- ordered by first_event (README.md, "Ad-hoc SQL"); "active" sessions are those whose last event is
-- within the inactivity gap of now.
CREATE TABLE IF NOT EXISTS clickstream.sessions
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
ENGINE = AggregatingMergeTree
PARTITION BY toDate(first_event)
ORDER BY session_id
TTL toDateTime(last_event) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.sessions_mv TO clickstream.sessions AS
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
FROM clickstream.events
GROUP BY session_id;
-- rebuild clickstream.sessions: session_id = session_id

-- Conversion funnel per 5-minute window of event time: distinct sessions with any event, with
-- a page view, with an add-to-cart, with a purchase *in that window* (each step counted on
-- its own; a session that viewed at 12:04 and bought at 12:06 counts in both windows).
CREATE TABLE IF NOT EXISTS clickstream.funnel_5m
(
    window_start DateTime('UTC'),
    sessions     AggregateFunction(uniqExact, UUID),
    viewed       AggregateFunction(uniqExact, UUID),
    carted       AggregateFunction(uniqExact, UUID),
    purchased    AggregateFunction(uniqExact, UUID)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY window_start
TTL window_start + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.funnel_5m_mv TO clickstream.funnel_5m AS
SELECT
    toStartOfFiveMinutes(event_time) AS window_start,
    uniqExactState(session_id) AS sessions,
    uniqExactStateIf(session_id, event_type = 'page_view') AS viewed,
    uniqExactStateIf(session_id, event_type = 'add_to_cart') AS carted,
    uniqExactStateIf(session_id, event_type = 'purchase') AS purchased
FROM clickstream.events
GROUP BY window_start;
-- rebuild clickstream.funnel_5m: window_start = toStartOfFiveMinutes(event_time)

-- Hopping windows of 10 minutes every 5 minutes over the 1-minute rollup: each minute belongs
-- to the window starting at its 5-minute boundary and to the one starting 5 minutes earlier.
-- A parameterized view, so the time range reaches the scan of events_1m (a plain view's outer
-- WHERE cannot be pushed below the ARRAY JOIN):
--   SELECT * FROM clickstream.events_10m_hop(from = now() - INTERVAL 1 HOUR, to = now())
-- returns the windows whose start is in [from, to), each aggregated from all its minutes.
CREATE VIEW IF NOT EXISTS clickstream.events_10m_hop AS
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

-- ============================================================================================
-- User behaviour (issue 13; the "User behaviour" dashboard and clickstream-top's users line).
--
--   users_daily       one row per (UTC day of event time, user_id)        ← users_daily_mv
--
-- Top users by events and revenue, sessions per user, new vs returning users (a user's first
-- day is min(day) over this table, so within the 400-day TTL) and daily retention cohorts
-- (users first seen on day D with a row on D+1, D+7) are GROUP BYs over it. The path from
-- landing page to purchase reads clickstream.sessions (landing_page, exit_page, converted).
-- Exact under replays as the rollups above: its own deduplication window, deterministic
-- output. Sessions per user are a `uniq` state: exact for sets this small (below 65536), and a
-- few bytes per (day, user) where uniqExact allocates kilobytes for each, which pushed a
-- 10,000-row insert over a tight max_memory_usage (the faults suite's memory-limit scenario).
-- ============================================================================================
CREATE TABLE IF NOT EXISTS clickstream.users_daily
(
    day         Date,
    user_id     String CODEC(ZSTD(1)),
    events      SimpleAggregateFunction(sum, UInt64),
    purchases   SimpleAggregateFunction(sum, UInt64),
    revenue     SimpleAggregateFunction(sum, Decimal(38, 2)),
    sessions    AggregateFunction(uniq, UUID),
    first_event SimpleAggregateFunction(min, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, user_id)
TTL day + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.users_daily_mv TO clickstream.users_daily AS
SELECT
    toDate(event_time) AS day,
    user_id,
    count() AS events,
    countIf(event_type = 'purchase') AS purchases,
    sum(if(event_type = 'purchase', coalesce(price, 0) * coalesce(quantity, 1), 0)) AS revenue,
    uniqState(session_id) AS sessions,
    min(event_time) AS first_event
FROM clickstream.events
GROUP BY day, user_id;
-- rebuild clickstream.users_daily: day = toDate(event_time)

-- Exactly-once support (sink)
--
-- The sink inserts each partition's rows with insert_deduplication_token =
-- 'topic:partition:first-last@mark' (the mark a hash of the first and last rows' event ids;
-- the events table's non_replicated_deduplication_window keeps the last 1000 tokens), and when it is assigned a partition it asks this table whether
-- anything from its starting offset on is already stored; only then does it read those
-- offsets from the events table (helped by the minmax index) and skip them. Fed by the same
-- INSERT as the events, so it can never disagree with them.
CREATE TABLE IF NOT EXISTS clickstream.kafka_progress
(
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    max_offset      SimpleAggregateFunction(max, Int64),
    rows            SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (kafka_topic, kafka_partition)
-- Its own window: a replayed insert is dropped per table, and `rows` must not count it twice.
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS clickstream.kafka_progress_mv TO clickstream.kafka_progress AS
SELECT kafka_topic, kafka_partition, max(kafka_offset) AS max_offset, count() AS rows
FROM clickstream.events
GROUP BY kafka_topic, kafka_partition;
-- rebuild clickstream.kafka_progress: (kafka_topic, kafka_partition) = (kafka_topic, kafka_partition)

ALTER TABLE clickstream.events ADD INDEX IF NOT EXISTS kafka_offset_minmax kafka_offset TYPE minmax GRANULARITY 1;

-- Rollup rebuilds the sink owes (exactly once under refused inserts)
--
-- An INSERT that ClickHouse refuses in a materialized view may have written its rows to
-- `events` and to the views fed before the failing one. Before the sink deletes those rows
-- (to write them again without the refused ones), it records here the rollup keys they touch;
-- once the flush's rows are in, it rebuilds those keys from `events` and deletes the record.
-- A sink stopped in between (killed, or its shutdown deadline passed) leaves the record: the
-- next sink to own the partition rebuilds the keys at its first write, before any commit.
CREATE TABLE IF NOT EXISTS clickstream.kafka_pending_rebuilds
(
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    repair_id       UInt64,
    rollup          LowCardinality(String),
    key             String,
    noted_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (kafka_topic, kafka_partition, repair_id, rollup, key);

-- Replays (`clickstream-sink replay`, `clickstream-sink dlq replay`)
--
-- A replay records its plan (the range per partition), the rollup keys its rows touch and
-- each step it finished, so that a crash at any step is finished by the next run, and a sink
-- does not start while a replay of its topic is unfinished. The newest replay's id scopes the
-- sink's deduplication tokens (the deleted rows' tokens are still remembered by ClickHouse).
CREATE TABLE IF NOT EXISTS clickstream.kafka_replays
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
ENGINE = MergeTree
ORDER BY (kafka_topic, replay_id, kafka_partition);

CREATE TABLE IF NOT EXISTS clickstream.kafka_replay_steps
(
    replay_id   UInt64,
    kafka_topic LowCardinality(String),
    step        LowCardinality(String),
    at          DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (kafka_topic, replay_id);

CREATE TABLE IF NOT EXISTS clickstream.kafka_replay_keys
(
    replay_id UInt64,
    rollup    LowCardinality(String),
    key       String
)
ENGINE = MergeTree
ORDER BY (replay_id, rollup, key)
TTL toDateTime(intDiv(replay_id, 1000)) + INTERVAL 30 DAY;

-- One operations run at a time per topic (`replay`, `dlq replay`): a run adds a row when it
-- starts and every 10 s while it runs, and one with released = 1 when it ends. The earliest
-- run seen in the last 30 s and not released holds the lease; a killed run's lapses (at once
-- for a run of the same boot and pid namespace, `scope`, whose process is gone).
CREATE TABLE IF NOT EXISTS clickstream.ops_leases
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
ENGINE = MergeTree
ORDER BY (kafka_topic, run_id)
TTL toDateTime(at) + INTERVAL 7 DAY;

-- Dead letters `dlq replay` inserted (written before their rows): `verify` counts their
-- offsets as stored, not as stored and dead-lettered.
CREATE TABLE IF NOT EXISTS clickstream.dead_letter_replays
(
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    reason          LowCardinality(String),
    replayed_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (kafka_topic, kafka_partition, kafka_offset);
