//! Writing rows to ClickHouse, and the one place where ClickHouse failures are classified.
//!
//! - [`Writer`] is the seam the pipeline depends on (a fake in unit tests, [`ClickHouseWriter`]
//!   in production).
//! - [`classify`] turns every error into one [`Failure`]: retry the same rows later, split
//!   them into smaller inserts, follow a changed table, isolate rejected rows, or stop.
//! - Rows are encoded by [`crate::schema::Layout`] for the table's structure as it is now.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clickhouse::Client;
use clickhouse::error::Error as ChError;

use crate::SinkError;
use crate::rollups::TouchedKeys;
use crate::rows::Sealed;
use crate::schema::{Column, Layout};
use crate::settings::{Delivery, Settings};
use uuid::Uuid;

/// How a failed write must be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Retry the same rows later: network, timeouts, overload, disk full, 5xx, unknown codes.
    #[error("transient: {0}")]
    Transient(String),
    /// The data is rejected: retrying the same rows cannot succeed.
    #[error("rejected data: {0}")]
    BadData(String),
    /// Configuration or schema problem: stop the sink.
    #[error("fatal: {0}")]
    Fatal(String),
    /// Valid rows, too many for one INSERT: insert them in parts.
    #[error("too big for one insert: {message}")]
    TooBig { split: Split, message: String },
    /// The table's structure changed; the writer follows it from now on: retry at once.
    #[error("table structure changed: {0}")]
    SchemaChanged(String),
}

/// How rows that are too many for one INSERT are divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// They span more partitions than `max_partitions_per_insert_block`: halves in event-time
    /// order (the partition key of a clickstream is a function of time; any key still ends
    /// at one row per part).
    ByTime,
    /// Memory limit: halves in offset order.
    InHalves,
}

impl Failure {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Transient(_) => "transient",
            Failure::BadData(_) => "bad_data",
            Failure::Fatal(_) => "fatal",
            Failure::TooBig { .. } => "too_big",
            Failure::SchemaChanged(_) => "schema_changed",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m)
            | Failure::BadData(m)
            | Failure::Fatal(m)
            | Failure::SchemaChanged(m)
            | Failure::TooBig { message: m, .. } => m,
        }
    }
}

/// What a ClickHouse error code means for the rows of an INSERT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Transient,
    BadData,
    Fatal,
    /// The request did not match the table: reload its structure, then decide.
    Structure,
    TooBig(Split),
}

/// Every ClickHouse error code the sink knows; anything else is [`Class::Transient`] (retrying
/// is safe with deduplication tokens; a retry that never succeeds shows as a stall).
pub fn class_of(code: u32, message: &str) -> Class {
    match code {
        // Too many parts (wait for merges) vs too many partitions in one block (split).
        252 if message.contains("partitions for single INSERT block") => {
            Class::TooBig(Split::ByTime)
        }
        252 => Class::Transient,
        241 | 173 => Class::TooBig(Split::InHalves), // MEMORY_LIMIT_EXCEEDED, CANNOT_ALLOCATE_MEMORY
        // Timeouts, network, overload, disk, read-only replica, unknown insert status,
        // Keeper, system errors: the same rows can succeed later.
        3 | 159 | 160 | 202 | 209 | 210 | 242 | 243 | 319 | 425 | 999 | 1000 => Class::Transient,
        // The request and the table disagree: after an ALTER, or a truly bad value.
        6 | 8 | 10 | 16 | 27 | 32 | 33 | 47 | 53 | 117 => Class::Structure,
        // Values the table (a constraint, a view's throwIf) rejects.
        26 | 38 | 41 | 69 | 70 | 72 | 131 | 321 | 349 | 376 | 395 | 469 => Class::BadData,
        // Configuration: wrong database/table, no rights, read-only user, bad credentials.
        60 | 62 | 81 | 164 | 192 | 193 | 194 | 497 | 516 => Class::Fatal,
        _ => Class::Transient,
    }
}

/// The code in a ClickHouse error message (`Code: 252. DB::Exception: ...`).
pub fn error_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Classifies a ClickHouse client error ([`Class::Structure`] is resolved by the writer).
pub fn classify(error: &ChError) -> (Class, String) {
    // A certificate nobody trusts does not become trusted by retrying.
    if let Some(message) = crate::clickhouse_client::tls_failure(error) {
        return (Class::Fatal, message);
    }
    let mut text = clickstream_connect::describe(error);
    let class = match error {
        ChError::BadResponse(message) => {
            if let Some(hint) = error_code(message).and_then(crate::clickhouse_client::hint) {
                text = format!("{text}: {hint}");
            }
            error_code(message).map_or(Class::Transient, |code| class_of(code, message))
        }
        ChError::SchemaMismatch(_) | ChError::InvalidParams(_) | ChError::Unsupported(_) => {
            Class::Fatal
        }
        // Network, timeouts, (de)compression of a response, anything else: try again.
        _ => Class::Transient,
    };
    (class, text)
}

/// A failure of a query other than the insert (no rows to split or isolate).
fn query_failure(error: &ChError) -> Failure {
    match classify(error) {
        (Class::Fatal, text) => Failure::Fatal(text),
        (_, text) => Failure::Transient(text),
    }
}

/// A failure of a rollup's rebuild: its view's SELECT refusing rows the table holds (a
/// `throwIf`, a constraint) is [`Failure::BadData`], naming the rollup (the flusher stops on
/// it if it persists); anything else as any query.
fn rebuild_failure(rollup: &str, error: &ChError) -> Failure {
    match classify(error) {
        (Class::BadData, text) => Failure::BadData(format!(
            "the query of rollup {rollup} refuses rows the events table holds ({text})"
        )),
        _ => query_failure(error),
    }
}

/// Where rows go. One call = one INSERT of all `rows`.
pub trait Writer: Send + Sync + 'static {
    /// Inserts the rows `part` of `rows` (indices, increasing); with a `token`, an insert
    /// repeating an earlier token is a no-op. Rows encoded for another structure than the
    /// table's current one are refused with [`Failure::SchemaChanged`] (encode them again
    /// for [`Writer::layout`]).
    fn insert(
        &self,
        rows: &Sealed,
        part: &[usize],
        token: Option<&str>,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// The table's structure as last read (what new rows are encoded for).
    fn layout(&self) -> Option<Arc<Layout>>;

    /// The highest offset of `partition` the table holds, if any (from the progress table).
    fn max_stored_offset(
        &self,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Result<Option<i64>, Failure>> + Send;

    /// Deletes the rows of these offsets of `partition` (left by an insert that failed in a
    /// materialized view after the table was written).
    fn delete_offsets(
        &self,
        topic: &str,
        partition: i32,
        offsets: &[i64],
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Per rollup, the keys that the stored rows of these offsets of `partition` touch
    /// (read before [`Writer::delete_offsets`] removes them).
    fn touched_keys(
        &self,
        topic: &str,
        partition: i32,
        offsets: &[i64],
    ) -> impl Future<Output = Result<TouchedKeys, Failure>> + Send;

    /// Brings each rollup's rows of `keys` back to what the table holds (the view's SELECT
    /// over the raw rows of those keys): after the rows a refused insert left were deleted,
    /// the views fed before the failing one hold them no more. Repeatable.
    fn rebuild_rollups(
        &self,
        keys: &TouchedKeys,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Whether the materialized view `view` (as ClickHouse names it: `db.view` or `view`) refuses the stored rows of these offsets of
    /// `partition`: its own SELECT, run over just those rows of the table (what a refused
    /// insert left there), fails as the INSERT did (error `code`). An error: it cannot tell
    /// (a view that does not read the table plainly, a failure of another kind).
    fn view_refuses(
        &self,
        topic: &str,
        partition: i32,
        view: &str,
        code: u32,
        offsets: &[i64],
    ) -> impl Future<Output = Result<bool, Failure>> + Send;

    /// Records `keys` as owed (repair `id`), before the rows they come from are deleted (or,
    /// for ranges of rows read again, inserted): a sink stopped before its rebuild leaves them
    /// to the next owner of `partition`.
    fn note_rebuild(
        &self,
        topic: &str,
        partition: i32,
        id: u64,
        keys: &TouchedKeys,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// The rebuilds recorded for these partitions and not done: their ids, and all their keys
    /// (a record of several partitions whole, since it is forgotten whole), with those of the
    /// rows the table holds now in recorded ranges of rows read again.
    fn pending_rebuilds(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> impl Future<Output = Result<(Vec<u64>, TouchedKeys), Failure>> + Send;

    /// Forgets the recorded rebuilds `ids` (done).
    fn forget_rebuilds(
        &self,
        topic: &str,
        ids: &[u64],
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Offsets of `partition` in `from..=to` that the table holds, with the event id stored
    /// at each (for replays: the sink skips them after checking the ids match).
    fn stored_offsets(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
    ) -> impl Future<Output = Result<BTreeMap<i64, Uuid>, Failure>> + Send;
}

/// `kafka_offset` in these offsets, as runs of consecutive offsets (a short statement).
fn offsets_condition(offsets: &[i64]) -> String {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &offset in offsets {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == offset => *last = offset,
            _ => ranges.push((offset, offset)),
        }
    }
    ranges
        .iter()
        .map(|(a, b)| format!("kafka_offset BETWEEN {a} AND {b}"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// One stored offset and the event stored at it.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct StoredOffset {
    kafka_offset: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
}

/// Inserts into ClickHouse over HTTP (RowBinaryWithNamesAndTypes, LZ4) with the official
/// client, encoding rows for the table's current structure.
#[derive(Clone)]
pub struct ClickHouseWriter {
    client: Client,
    table: String,
    progress_table: String,
    database: String,
    delivery: Delivery,
    insert_timeout: Duration,
    layout: Arc<RwLock<Option<Arc<Layout>>>>,
    topic: String,
    /// The newest replay of the topic (0: none): scopes the deduplication tokens, because
    /// ClickHouse still remembers the tokens of the rows a replay deleted.
    replay_generation: Arc<std::sync::atomic::AtomicU64>,
}

/// A rollup rebuild may take this many insert timeouts (it reads the raw rows of its keys
/// twice: the view's query checked, then inserted).
const REBUILD_TIMEOUTS: u32 = 20;

/// The progress table fed by a materialized view from the events table (schema.sql).
pub const PROGRESS_TABLE: &str = "kafka_progress";

/// The rollup rebuilds owed after refused inserts (schema.sql).
pub const PENDING_REBUILDS_TABLE: &str = "kafka_pending_rebuilds";

/// The `rollup` of a recorded rebuild's row that holds no key but the offset the progress
/// table's maximum must keep for its partition (see [`TouchedKeys::progress_floor`]).
const PROGRESS_FLOOR: &str = "(kafka_progress floor)";

/// The `rollup` of a recorded rebuild's row that holds no key but a range of offsets
/// (`first-last`) of rows read again: their keys are read from the table when the record is
/// taken over (see [`TouchedKeys::reread`]).
const REREAD_RANGE: &str = "(kafka rows read again)";

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct PendingKey {
    repair_id: u64,
    kafka_partition: i32,
    rollup: String,
    key: String,
}

impl ClickHouseWriter {
    /// Fails when a TLS or password file of the settings cannot be used.
    pub fn new(settings: &Settings) -> Result<ClickHouseWriter, SinkError> {
        let client = crate::clickhouse_client::client(settings)?
            // Deduplication tokens are checked synchronously only for plain inserts. Views are
            // fed one after the other (ClickHouse's default): with `parallel_view_processing`
            // an INSERT 30 % faster in the benchmark, but a view that fails (a memory limit)
            // left the others' blocks behind, which the split parts then counted again (the
            // memory-limit fault scenario: rollups at 2.8 times the raw table).
            .with_setting("async_insert", "0");
        Ok(ClickHouseWriter {
            client,
            table: settings.table.clone(),
            progress_table: PROGRESS_TABLE.to_owned(),
            database: settings.database.clone(),
            delivery: settings.delivery,
            insert_timeout: Duration::from_millis(settings.insert_timeout_ms),
            layout: Arc::default(),
            topic: settings.topic.clone(),
            replay_generation: Arc::default(),
        })
    }

    /// A query bounded by the insert timeout (a hung ClickHouse is a transient failure).
    async fn bounded<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, ChError>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.insert_timeout, work).await {
            Ok(result) => result.map_err(|e| query_failure(&e)),
            Err(_) => Err(Failure::Transient(format!(
                "{what} did not finish within insert_timeout_ms = {}",
                self.insert_timeout.as_millis()
            ))),
        }
    }

    /// Reads the table's structure and plans inserts for it; a table that cannot hold the
    /// event contract is fatal, with the column named.
    pub async fn load_layout(&self) -> Result<Arc<Layout>, Failure> {
        let columns: Vec<Column> = self
            .bounded(
                "reading the table structure",
                self.client
                    .query(
                        "SELECT name, type, default_kind FROM system.columns \
                         WHERE database = ? AND table = ? ORDER BY position",
                    )
                    .bind(&self.database)
                    .bind(&self.table)
                    .fetch_all(),
            )
            .await?;
        let layout = Layout::new(&self.database, &self.table, &columns)
            .map_err(|incompatible| Failure::Fatal(incompatible.to_string()))?;
        let layout = Arc::new(layout);
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = Some(layout.clone());
        Ok(layout)
    }

    fn current_layout(&self) -> Option<Arc<Layout>> {
        self.layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Refuses to start when the table is missing or cannot hold the event contract, or the
    /// settings exactly-once relies on are off. Transient failures (ClickHouse not up yet)
    /// are returned as such.
    pub async fn check_startup(&self) -> Result<(), Failure> {
        let engine: Option<String> = self
            .bounded(
                "start-up check",
                self.client
                    .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
                    .bind(&self.database)
                    .bind(&self.table)
                    .fetch_optional(),
            )
            .await?;
        let Some(engine) = engine else {
            return Err(Failure::Fatal(format!(
                "table {}.{} does not exist: apply clickhouse/schema.sql",
                self.database, self.table
            )));
        };
        self.load_layout().await?;
        let replays = self
            .bounded(
                "start-up check",
                crate::ops::replay::state(&self.client, &self.database, &self.topic),
            )
            .await?;
        if let Some(id) = replays.unfinished {
            return Err(Failure::Fatal(format!(
                "replay {id} of topic {} stopped part-way (its rows are deleted, the group's \
                 offsets not reset yet): run `clickstream-sink replay` with the same settings \
                 to finish it, then start the sink",
                self.topic
            )));
        }
        self.replay_generation
            .store(replays.generation, std::sync::atomic::Ordering::Relaxed);
        // Written only after a refused insert, maybe weeks from now: a missing table or grant
        // found then would stop the sink in the middle of isolating rows. An INSERT of no rows
        // needs both (a user without a grant does not see the table in system.tables).
        self.bounded(
            "start-up check",
            self.client
                .query(&format!(
                    "INSERT INTO {PENDING_REBUILDS_TABLE} SELECT * FROM {PENDING_REBUILDS_TABLE} WHERE 0"
                ))
                .execute(),
        )
        .await
        .map_err(|failure| match failure {
            Failure::Fatal(text) if error_code(&text) == Some(60) => Failure::Fatal(format!(
                "table {}.{PENDING_REBUILDS_TABLE} does not exist: the sink records there the \
                 rollup keys it owes a rebuild after a refused insert; apply \
                 clickhouse/schema.sql (idempotent) to create it",
                self.database
            )),
            Failure::Fatal(text) => Failure::Fatal(format!(
                "start-up check: the sink's user cannot write {}.{PENDING_REBUILDS_TABLE} \
                 (where it records the rollup keys it owes a rebuild): {text}",
                self.database
            )),
            other => other,
        })?;
        self.check_repair_grants().await?;
        if self.delivery == Delivery::AtLeastOnce {
            return Ok(());
        }
        if engine.starts_with("MergeTree")
            || engine.starts_with("Replacing")
            || engine.starts_with("Aggregating")
        {
            let window = engine
                .split("non_replicated_deduplication_window = ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            if window < 100 {
                return Err(Failure::Fatal(format!(
                    "exactly-once needs deduplication of repeated inserts, but {}.{} has \
                     non_replicated_deduplication_window = {window}: set it to 1000 or more \
                     (ALTER TABLE {}.{} MODIFY SETTING non_replicated_deduplication_window = 1000), \
                     or run with --delivery at-least-once",
                    self.database, self.table, self.database, self.table
                )));
            }
        }
        let progress: u64 = self
            .bounded(
                "start-up check",
                self.client
                    .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
                    .bind(&self.database)
                    .bind(&self.progress_table)
                    .fetch_one(),
            )
            .await?;
        if progress == 0 {
            return Err(Failure::Fatal(format!(
                "exactly-once needs the progress table {}.{} (clickhouse/schema.sql, section \
                 \"Exactly-once support\"), or run with --delivery at-least-once",
                self.database, self.progress_table
            )));
        }
        Ok(())
    }

    /// The repair of a refused insert (maybe weeks from now) deletes the rows it left, rebuilds
    /// the rollup keys they touched and deletes its record of them: privileges a user set up by
    /// hand may lack, found then in the middle of the repair. Checked now with `CHECK GRANT`
    /// (roles and wildcards included); an older server without it is not checked.
    async fn check_repair_grants(&self) -> Result<(), Failure> {
        let rollups = self
            .bounded(
                "start-up check",
                crate::rollups::rollups(&self.client, &self.database, &self.table),
            )
            .await?;
        // A view the user cannot see is one the sink cannot rebuild, nor find refused rows
        // with: found out now, not after a refused insert.
        let hidden: Vec<String> = rollups
            .iter()
            .filter(|r| r.why_not == Some(crate::rollups::NotRebuilt::Hidden))
            .map(|r| r.view.clone())
            .collect();
        if !hidden.is_empty() {
            return Err(Failure::Fatal(format!(
                "start-up check: {}.{} feeds materialized view(s) {} that the sink's user cannot \
                 see (system.tables shows a user only what it has a privilege on), so it could \
                 not rebuild their rollups after a refused insert: GRANT SHOW TABLES, SHOW \
                 COLUMNS ON {}.* TO the sink's user, as clickhouse/users.sql does",
                self.database,
                self.table,
                hidden.join(", "),
                self.database
            )));
        }
        let mut needed = vec![
            ("ALTER DELETE", self.table.clone()),
            ("ALTER DELETE", PENDING_REBUILDS_TABLE.to_owned()),
        ];
        // Only the rollups it can rebuild (declared in schema.sql, in this database).
        needed.extend(
            rollups
                .iter()
                .filter(|rollup| rollup.rebuild.is_some())
                .map(|rollup| ("INSERT, ALTER DELETE", rollup.target.clone())),
        );
        let mut missing = Vec::new();
        for (privileges, table) in needed {
            let object = format!("`{}`.`{table}`", self.database);
            let statement = format!("CHECK GRANT {privileges} ON {object}");
            match self
                .bounded(
                    "start-up check",
                    self.client.query(&statement).fetch_one::<u8>(),
                )
                .await
            {
                Ok(0) => missing.push(format!("GRANT {privileges} ON {}.{table}", self.database)),
                Ok(_) => {}
                Err(Failure::Fatal(text)) if error_code(&text) == Some(62) => {
                    tracing::info!(
                        "this ClickHouse has no CHECK GRANT: the privileges the repair of a \
                         refused insert needs are not checked at start"
                    );
                    return Ok(());
                }
                Err(other) => return Err(other),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(Failure::Fatal(format!(
            "start-up check: the sink's user lacks privileges the repair of a refused insert \
             needs (deleting the rows it left, rebuilding the rollup keys they touched): {}; \
             grant them to the sink's user as clickhouse/users.sql does",
            missing.join("; ")
        )))
    }

    async fn send(
        &self,
        layout: &Layout,
        body: Vec<bytes::Bytes>,
        token: Option<&str>,
    ) -> Result<(), ChError> {
        let generation = self
            .replay_generation
            .load(std::sync::atomic::Ordering::Relaxed);
        let client = match token {
            Some(token) if generation > 0 => self
                .client
                .clone()
                .with_setting(
                    "insert_deduplication_token",
                    format!("{token}:r{generation}"),
                )
                .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1"),
            Some(token) => self
                .client
                .clone()
                .with_setting("insert_deduplication_token", token)
                .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1"),
            // Without a token ClickHouse would deduplicate by a hash of the data, which drops
            // legitimately identical batches; at-least-once means no deduplication at all.
            None => self.client.clone().with_setting("insert_deduplicate", "0"),
        };
        // The body is compressed blocks already (`Sealed::body`): sent as they are.
        let client = client
            .with_compression(clickhouse::Compression::None)
            .with_setting("decompress", "1");
        let mut insert = client.insert_formatted_with(layout.statement.clone());
        insert.send(crate::packed::compress(&layout.header)).await?;
        for block in body {
            insert.send(block).await?;
        }
        insert.end().await
    }

    /// Which of these offsets of `partition` the table holds: looked up by the offsets
    /// themselves, a thousand per statement (`dlq replay`'s letters may lie far apart, and
    /// the range between them may hold millions of rows).
    pub async fn stored_among(
        &self,
        topic: &str,
        partition: i32,
        offsets: &[i64],
    ) -> Result<BTreeSet<i64>, Failure> {
        let mut sorted = offsets.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut stored = BTreeSet::new();
        for chunk in sorted.chunks(STORED_AMONG_CHUNK) {
            let found: Vec<i64> = self
                .bounded(
                    "stored offsets lookup",
                    self.client
                        .query(&format!(
                            "SELECT DISTINCT kafka_offset FROM {} \
                             WHERE kafka_topic = ? AND kafka_partition = ? AND ({})",
                            self.table,
                            offsets_condition(chunk)
                        ))
                        .bind(topic)
                        .bind(partition)
                        .fetch_all(),
                )
                .await?;
            stored.extend(found);
        }
        Ok(stored)
    }
}

/// Offsets per statement of [`ClickHouseWriter::stored_among`].
const STORED_AMONG_CHUNK: usize = 1_000;

impl Writer for ClickHouseWriter {
    fn layout(&self) -> Option<Arc<Layout>> {
        self.current_layout()
    }

    async fn insert(
        &self,
        rows: &Sealed,
        part: &[usize],
        token: Option<&str>,
    ) -> Result<(), Failure> {
        let layout = match self.current_layout() {
            Some(layout) => layout,
            None => self.load_layout().await?,
        };
        if !Arc::ptr_eq(&layout, &rows.layout) && layout.columns != rows.layout.columns {
            return Err(Failure::SchemaChanged(
                "the table's structure changed after these rows were encoded".into(),
            ));
        }
        let body = rows.body(part);
        let error =
            match tokio::time::timeout(self.insert_timeout, self.send(&rows.layout, body, token))
                .await
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => error,
                Err(_) => {
                    return Err(Failure::Transient(format!(
                        "insert did not finish within insert_timeout_ms = {}",
                        self.insert_timeout.as_millis()
                    )));
                }
            };
        match classify(&error) {
            (Class::Transient, message) => Err(Failure::Transient(message)),
            (Class::BadData, message) => Err(Failure::BadData(message)),
            (Class::Fatal, message) => Err(Failure::Fatal(message)),
            (Class::TooBig(split), message) => Err(Failure::TooBig { split, message }),
            // Did the table change under us? Then follow it; if not, the rows are bad.
            (Class::Structure, message) => {
                let reloaded = self.load_layout().await?;
                if reloaded.columns != rows.layout.columns {
                    tracing::warn!(
                        table = %format!("{}.{}", self.database, self.table),
                        error = %message,
                        "the table's structure changed; inserting with the new structure"
                    );
                    Err(Failure::SchemaChanged(message))
                } else {
                    Err(Failure::BadData(message))
                }
            }
        }
    }

    async fn max_stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, Failure> {
        // The progress view answers cheaply what is stored at all.
        self.bounded(
            "progress lookup",
            self.client
                .query(&format!(
                    "SELECT maxOrNull(max_offset) FROM {} WHERE kafka_topic = ? AND kafka_partition = ?",
                    self.progress_table
                ))
                .bind(topic)
                .bind(partition)
                .fetch_one(),
        )
        .await
    }

    async fn delete_offsets(
        &self,
        topic: &str,
        partition: i32,
        offsets: &[i64],
    ) -> Result<(), Failure> {
        let condition = offsets_condition(offsets);
        self.bounded(
            "deleting a partly written insert",
            self.client
                .query(&format!(
                    "DELETE FROM {} WHERE kafka_topic = ? AND kafka_partition = ? AND ({condition})",
                    self.table
                ))
                .bind(topic)
                .bind(partition)
                .with_setting("lightweight_deletes_sync", "2")
                .execute(),
        )
        .await
    }

    async fn touched_keys(
        &self,
        topic: &str,
        partition: i32,
        offsets: &[i64],
    ) -> Result<TouchedKeys, Failure> {
        let condition = format!(
            "kafka_topic = {} AND kafka_partition = {partition} AND ({})",
            crate::rollups::literal(topic),
            offsets_condition(offsets)
        );
        self.bounded(
            "reading the rollup keys of a partly written insert",
            crate::rollups::touched_keys(&self.client, &self.database, &self.table, &condition),
        )
        .await
    }

    async fn rebuild_rollups(&self, keys: &TouchedKeys) -> Result<(), Failure> {
        let db = format!("`{}`", self.database);
        let floors = &keys.progress_floor;
        for (rollup, keys) in &keys.rollups {
            if keys.is_empty() {
                continue;
            }
            // It reads every raw row of its keys (a day, a partition) twice: given twenty
            // insert timeouts, since a retry cannot stop a rebuild the server still runs.
            let limit = self.insert_timeout * REBUILD_TIMEOUTS;
            let rebuilt = tokio::time::timeout(
                limit,
                crate::rollups::rebuild(
                    &self.client,
                    &db,
                    rollup,
                    &crate::rollups::literal_set(keys),
                ),
            )
            .await;
            match rebuilt {
                Ok(result) => result.map_err(|e| rebuild_failure(&rollup.target, &e))?,
                Err(_) => {
                    return Err(Failure::Transient(format!(
                        "rebuilding the keys of rollup {} did not finish within {} s \
                         ({REBUILD_TIMEOUTS} × insert_timeout_ms)",
                        rollup.target,
                        limit.as_secs()
                    )));
                }
            }
            // How far ClickHouse held a partition tells a sink which rows it reads again (after
            // rows were deleted by hand): rebuilt from the rows read again so far, it would
            // forget the rest. So the floor recorded with the keys is added back (a row of no
            // rows). After a refused insert the maximum follows the table; a `replay` lowers
            // it on purpose.
            if rollup.target != self.progress_table {
                continue;
            }
            for (partition, floor) in floors {
                self.bounded(
                    "keeping how far the progress table goes",
                    self.client
                        .query(&format!(
                            "INSERT INTO {} (kafka_topic, kafka_partition, max_offset, rows) \
                             VALUES (?, ?, ?, 0)",
                            self.progress_table
                        ))
                        .bind(&self.topic)
                        .bind(*partition)
                        .bind(*floor)
                        .with_setting("insert_deduplicate", "0")
                        .execute(),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn view_refuses(
        &self,
        topic: &str,
        partition: i32,
        view: &str,
        code: u32,
        offsets: &[i64],
    ) -> Result<bool, Failure> {
        // `db.view` as ClickHouse names it: a view of another database reads no rows here.
        let view = match view.split_once('.') {
            Some((database, _)) if database != self.database => {
                return Err(Failure::Fatal(format!(
                    "view {view} is not in database {}",
                    self.database
                )));
            }
            Some((_, name)) => name,
            None => view,
        };
        let select: Option<String> = self
            .bounded(
                "reading a view's SELECT",
                self.client
                    .query("SELECT as_select FROM system.tables WHERE database = ? AND name = ?")
                    .bind(&self.database)
                    .bind(view)
                    .fetch_optional(),
            )
            .await?;
        // Its `?` doubled (the client reads a single one as a bind placeholder).
        let select = select.unwrap_or_default().replace('?', "??");
        let (db, table) = (&self.database, &self.table);
        let rows = format!(
            "FROM (SELECT * FROM `{db}`.`{table}` WHERE kafka_topic = {} AND kafka_partition = {partition} AND ({}))",
            crate::rollups::literal(topic),
            offsets_condition(offsets)
        );
        let [ref only] = crate::rollups::mentions(&select, db, table)[..] else {
            return Err(Failure::Fatal(format!(
                "view {view} does not read {db}.{table} once, plainly"
            )));
        };
        let probe = format!("{}{rows}{}", &select[..only.start], &select[only.end..]);
        // Conditions stay where the view has them: pushed into the subquery or PREWHERE, a
        // `throwIf` would also see the other rows of a granule.
        let probe = self
            .client
            .query(&format!("SELECT * FROM ({probe}) FORMAT Null"))
            .with_setting("enable_optimize_predicate_expression", "0")
            .with_setting("optimize_move_to_prewhere", "0");
        match tokio::time::timeout(self.insert_timeout, probe.execute()).await {
            Ok(Ok(())) => Ok(false),
            Ok(Err(error)) => match classify(&error) {
                (Class::BadData, text) if error_code(&text) == Some(code) => Ok(true),
                (_, text) => Err(Failure::Transient(text)),
            },
            Err(_) => Err(Failure::Transient(format!(
                "a view's SELECT over some rows did not finish within insert_timeout_ms = {}",
                self.insert_timeout.as_millis()
            ))),
        }
    }

    async fn note_rebuild(
        &self,
        topic: &str,
        partition: i32,
        id: u64,
        keys: &TouchedKeys,
    ) -> Result<(), Failure> {
        use crate::rollups::literal;
        // (partition, rollup, key) of each record row: the keys, then the ranges of rows read
        // again; the progress floors only go with one of those.
        let mut rows: Vec<(i32, &str, String)> = Vec::new();
        for (rollup, keys) in &keys.rollups {
            rows.extend(
                keys.iter()
                    .map(|key| (partition, rollup.target.as_str(), key.clone())),
            );
        }
        for (range_partition, ranges) in &keys.reread {
            rows.extend(
                ranges.iter().map(|(first, last)| {
                    (*range_partition, REREAD_RANGE, format!("{first}-{last}"))
                }),
            );
        }
        if rows.is_empty() {
            return Ok(());
        }
        for (floor_partition, floor) in &keys.progress_floor {
            rows.push((*floor_partition, PROGRESS_FLOOR, floor.to_string()));
        }
        let topic = literal(topic);
        let mut values = String::new();
        for (row_partition, rollup, key) in &rows {
            if !values.is_empty() {
                values.push_str(", ");
            }
            let _ = write!(
                values,
                "({topic}, {row_partition}, {id}, {}, {})",
                literal(rollup),
                literal(key)
            );
        }
        self.bounded(
            "recording the rollup keys to rebuild",
            self.client
                .query(&format!(
                    "INSERT INTO {PENDING_REBUILDS_TABLE} \
                     (kafka_topic, kafka_partition, repair_id, rollup, key) VALUES {values}"
                ))
                .with_setting("insert_deduplicate", "0")
                .with_setting("max_query_size", crate::rollups::LARGE_QUERY)
                .execute(),
        )
        .await
    }

    async fn pending_rebuilds(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<(Vec<u64>, TouchedKeys), Failure> {
        let list = partitions
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let rows: Vec<PendingKey> = self
            .bounded(
                "reading the rollup rebuilds a stopped sink left",
                self.client
                    .query(&format!(
                        "SELECT repair_id, kafka_partition, rollup, key FROM {PENDING_REBUILDS_TABLE} \
                         WHERE kafka_topic = ? AND repair_id IN (SELECT repair_id FROM \
                         {PENDING_REBUILDS_TABLE} WHERE kafka_topic = ? AND kafka_partition IN ({list}))"
                    ))
                    .bind(topic)
                    .bind(topic)
                    .fetch_all(),
            )
            .await?;
        let mut ids: Vec<u64> = rows.iter().map(|r| r.repair_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut keys = TouchedKeys::default();
        if rows.is_empty() {
            return Ok((ids, keys));
        }
        let rollups = self
            .bounded(
                "reading the rollups",
                crate::rollups::rollups(&self.client, &self.database, &self.table),
            )
            .await?;
        let mut by_rollup: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in rows {
            if row.rollup == PROGRESS_FLOOR {
                if let Ok(floor) = row.key.parse::<i64>() {
                    let mine = keys
                        .progress_floor
                        .entry(row.kafka_partition)
                        .or_insert(floor);
                    *mine = (*mine).max(floor);
                }
                continue;
            }
            if row.rollup == REREAD_RANGE {
                if let Some((first, last)) = row.key.split_once('-')
                    && let (Ok(first), Ok(last)) = (first.parse::<i64>(), last.parse::<i64>())
                {
                    keys.reread
                        .entry(row.kafka_partition)
                        .or_default()
                        .push((first, last));
                } else {
                    tracing::warn!(
                        partition = row.kafka_partition,
                        key = %row.key,
                        "a recorded range of rows read again is not `first-last`: skipped"
                    );
                }
                continue;
            }
            by_rollup.entry(row.rollup).or_default().push(row.key);
        }
        // The keys of the rows read again that the table holds now (a sink stopped right
        // after their INSERT never read them).
        for (partition, ranges) in &keys.reread {
            let condition = format!(
                "kafka_topic = {} AND kafka_partition = {partition} AND ({})",
                crate::rollups::literal(topic),
                ranges
                    .iter()
                    .map(|(a, b)| format!("kafka_offset BETWEEN {a} AND {b}"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            );
            let touched = self
                .bounded(
                    "reading the rollup keys of rows read again",
                    crate::rollups::touched_keys(
                        &self.client,
                        &self.database,
                        &self.table,
                        &condition,
                    ),
                )
                .await?;
            if !touched.not_rebuilt.is_empty() {
                tracing::error!(
                    partition,
                    offsets = %ranges.iter().map(|(a, b)| format!("{a}..={b}")).collect::<Vec<_>>().join(", "),
                    views = %crate::rollups::not_rebuilt(&touched),
                    "these materialized views cannot be rebuilt, and `clickstream-sink verify` \
                     does not check them: they may count rows of partition {partition} read \
                     again twice; rebuild what they hold of these rows from the raw table by hand"
                );
            }
            for (rollup, owed) in touched.rollups {
                by_rollup.entry(rollup.target).or_default().extend(owed);
            }
        }
        for (target, mut owed) in by_rollup {
            match rollups
                .iter()
                .find(|r| r.target == target && r.rebuild.is_some())
            {
                Some(rollup) => {
                    owed.sort_unstable();
                    owed.dedup();
                    keys.rollups.push((rollup.clone(), owed));
                }
                None => tracing::warn!(
                    rollup = %target,
                    keys = owed.len(),
                    "a recorded rollup rebuild names a rollup that is gone (or lost its rebuild declaration): skipped"
                ),
            }
        }
        Ok((ids, keys))
    }

    async fn forget_rebuilds(&self, topic: &str, ids: &[u64]) -> Result<(), Failure> {
        if ids.is_empty() {
            return Ok(());
        }
        let list = ids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        self.bounded(
            "forgetting the rollup rebuilds done",
            self.client
                .query(&format!(
                    "DELETE FROM {PENDING_REBUILDS_TABLE} WHERE kafka_topic = ? AND repair_id IN ({list})"
                ))
                .bind(topic)
                .with_setting("lightweight_deletes_sync", "2")
                .execute(),
        )
        .await
    }

    async fn stored_offsets(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
    ) -> Result<BTreeMap<i64, Uuid>, Failure> {
        let stored: Vec<StoredOffset> = self
            .bounded(
                "stored offsets lookup",
                self.client
                    .query(&format!(
                        "SELECT kafka_offset, any(event_id) AS event_id FROM {} \
                         WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset BETWEEN ? AND ? \
                         GROUP BY kafka_offset",
                        self.table
                    ))
                    .bind(topic)
                    .bind(partition)
                    .bind(from)
                    .bind(to)
                    .fetch_all(),
            )
            .await?;
        Ok(stored
            .into_iter()
            .map(|s| (s.kafka_offset, s.event_id))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(message: &str) -> ChError {
        ChError::BadResponse(message.to_owned())
    }

    /// Every code the issue tracker and operators have met, with what the sink must do.
    #[test]
    fn clickhouse_errors_are_classified() {
        use Class::*;
        let cases = [
            (
                "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)",
                Transient,
            ),
            (
                "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS)",
                TooBig(Split::ByTime),
            ),
            (
                "Code: 241. DB::Exception: Memory limit (for query) exceeded: would use 9.31 GiB. (MEMORY_LIMIT_EXCEEDED)",
                TooBig(Split::InHalves),
            ),
            (
                "Code: 173. DB::Exception: Cannot allocate memory. (CANNOT_ALLOCATE_MEMORY)",
                TooBig(Split::InHalves),
            ),
            (
                "Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)",
                Transient,
            ),
            (
                "Code: 159. DB::Exception: Timeout exceeded: elapsed 30 seconds. (TIMEOUT_EXCEEDED)",
                Transient,
            ),
            (
                "Code: 209. DB::NetException: Timeout exceeded while reading from socket. (SOCKET_TIMEOUT)",
                Transient,
            ),
            (
                "Code: 210. DB::NetException: Connection reset by peer. (NETWORK_ERROR)",
                Transient,
            ),
            (
                "Code: 202. DB::Exception: Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)",
                Transient,
            ),
            (
                "Code: 242. DB::Exception: Table is in readonly mode. (TABLE_IS_READ_ONLY)",
                Transient,
            ),
            (
                "Code: 319. DB::Exception: Unknown status, client must retry. (UNKNOWN_STATUS_OF_INSERT)",
                Transient,
            ),
            (
                "Code: 425. DB::Exception: System error. (SYSTEM_ERROR)",
                Transient,
            ),
            (
                "Code: 999. Coordination::Exception: Connection loss. (KEEPER_EXCEPTION)",
                Transient,
            ),
            (
                "Code: 4242. DB::Exception: something new. (FUTURE_ERROR)",
                Transient,
            ),
            ("503 Service Unavailable", Transient),
            (
                "Code: 117. DB::Exception: Type of 'duration_ms' must be UInt64, not UInt32. (INCORRECT_DATA)",
                Structure,
            ),
            (
                "Code: 53. DB::Exception: Type mismatch. (TYPE_MISMATCH)",
                Structure,
            ),
            (
                "Code: 16. DB::Exception: No such column duration_ms in table. (NO_SUCH_COLUMN_IN_TABLE)",
                Structure,
            ),
            (
                "Code: 33. DB::Exception: Cannot read all data. (CANNOT_READ_ALL_DATA)",
                Structure,
            ),
            (
                "Code: 27. DB::Exception: Cannot parse input. (CANNOT_PARSE_INPUT_ASSERTION_FAILED)",
                Structure,
            ),
            (
                "Code: 469. DB::Exception: Constraint `price` is violated. (VIOLATED_CONSTRAINT)",
                BadData,
            ),
            (
                "Code: 395. DB::Exception: Value passed to 'throwIf' is non-zero. (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)",
                BadData,
            ),
            (
                "Code: 321. DB::Exception: Out of range. (VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE)",
                BadData,
            ),
            (
                "Code: 60. DB::Exception: Table clickstream.events does not exist. (UNKNOWN_TABLE)",
                Fatal,
            ),
            (
                "Code: 81. DB::Exception: Database nope does not exist. (UNKNOWN_DATABASE)",
                Fatal,
            ),
            (
                "Code: 164. DB::Exception: Cannot execute query in readonly mode. (READONLY)",
                Fatal,
            ),
            (
                "Code: 497. DB::Exception: Not enough privileges. (ACCESS_DENIED)",
                Fatal,
            ),
            (
                "Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)",
                Fatal,
            ),
        ];
        for (message, class) in cases {
            assert_eq!(classify(&response(message)).0, class, "{message}");
        }
        let (_, text) = classify(&response(
            "Code: 60. DB::Exception: Unknown table expression identifier 'events'. (UNKNOWN_TABLE)",
        ));
        assert!(
            text.contains("clickhouse/schema.sql"),
            "a missing table says what to do: {text}"
        );
        assert_eq!(classify(&ChError::TimedOut).0, Transient);
        assert_eq!(
            classify(&ChError::Network("connection refused".into())).0,
            Transient
        );
        assert_eq!(
            classify(&ChError::SchemaMismatch("column x".into())).0,
            Fatal
        );
    }

    /// A view as the start-up check reads it from `system.tables`.
    #[derive(clickhouse::Row, serde::Serialize)]
    struct View {
        engine: String,
        database: String,
        name: String,
        create_table_query: String,
        as_select: String,
    }

    /// A writer on `mock`, which first lists the views the table feeds: one (`events_1m`) a
    /// declared rollup, then one writing a table without a declaration, one writing into
    /// another database, one living in another database and one without a TO table.
    /// With `hidden`, the engine also lists `secret_mv`, which the user does not see.
    fn grant_check(mock: &clickhouse::test::Mock, hidden: bool) -> ClickHouseWriter {
        let view = |database: &str, name: &str, to: &str| View {
            engine: "MaterializedView".into(),
            database: database.into(),
            name: name.into(),
            create_table_query: format!(
                "CREATE MATERIALIZED VIEW {database}.{name}{to} (x UInt8) AS SELECT 1 AS x FROM db.events"
            ),
            as_select: "SELECT 1 AS x FROM db.events".into(),
        };
        let mut fed = vec![
            ("db", "events_1m_mv"),
            ("db", "mine_mv"),
            ("db", "elsewhere_mv"),
            ("other", "foreign_mv"),
            ("db", "inner_mv"),
        ];
        if hidden {
            fed.push(("db", "secret_mv"));
        }
        mock.add(clickhouse::test::handlers::provide(
            fed.into_iter()
                .map(|(db, name)| (db.to_owned(), name.to_owned())),
        ));
        mock.add(clickhouse::test::handlers::provide(vec![
            view("db", "events_1m_mv", " TO db.events_1m"),
            view("db", "mine_mv", " TO db.mine"),
            view("db", "elsewhere_mv", " TO other.pages_5m"),
            view("other", "foreign_mv", " TO db.sessions"),
            view("db", "inner_mv", ""),
        ]));
        let settings = Settings {
            clickhouse_url: mock.url().to_owned(),
            database: "db".into(),
            ..Settings::default()
        };
        ClickHouseWriter::new(&settings).expect("writer")
    }

    /// The start-up check asks for the repair's grants on the table, the record of keys owed
    /// and the one rollup it can rebuild (3 questions: the mock refuses a fourth), and stops
    /// naming what is missing.
    #[tokio::test]
    async fn a_missing_grant_stops_the_start_naming_it() {
        use clickhouse::test::{Mock, handlers};
        let mock = Mock::new();
        let writer = grant_check(&mock, false);
        for answer in [1u8, 1, 1] {
            mock.add(handlers::provide(vec![answer]));
        }
        writer.check_repair_grants().await.expect("all granted");

        let writer = grant_check(&mock, false);
        for answer in [1u8, 1, 0] {
            mock.add(handlers::provide(vec![answer]));
        }
        let Err(Failure::Fatal(text)) = writer.check_repair_grants().await else {
            panic!("a missing grant is fatal");
        };
        assert!(
            text.contains("GRANT INSERT, ALTER DELETE ON db.events_1m")
                && text.contains("clickhouse/users.sql")
                && !text.contains("kafka_pending_rebuilds"),
            "{text}"
        );

        // A view the user cannot see: stopped before any CHECK GRANT, naming it and the grant.
        let writer = grant_check(&mock, true);
        let Err(Failure::Fatal(text)) = writer.check_repair_grants().await else {
            panic!("a hidden view is fatal");
        };
        assert!(
            text.contains("secret_mv") && text.contains("GRANT SHOW TABLES, SHOW COLUMNS ON db.*"),
            "{text}"
        );

        // A server without CHECK GRANT (a syntax error): not checked, not refused.
        let writer = grant_check(&mock, false);
        mock.add(handlers::exception(62));
        writer.check_repair_grants().await.expect("not checked");
    }

    #[test]
    fn error_codes_are_read_from_messages() {
        assert_eq!(error_code("Code: 252. DB::Exception: x"), Some(252));
        assert_eq!(error_code("bad response: Code: 60. DB"), Some(60));
        assert_eq!(error_code("no code here"), None);
    }
}
