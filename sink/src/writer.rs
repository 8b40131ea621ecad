//! Writing rows to ClickHouse, and the one place where ClickHouse failures are classified.
//!
//! - [`Writer`] is the seam the pipeline depends on (a fake in unit tests, [`ClickHouseWriter`]
//!   in production).
//! - [`classify`] turns every error into [`Failure::Transient`] (retry the same rows with
//!   backoff), [`Failure::BadData`] (the rows themselves are rejected: isolate and dead-letter
//!   them) or [`Failure::Fatal`] (missing table, permissions, schema mismatch: stop).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use clickhouse::Client;
use clickhouse::error::Error as ChError;

use crate::row::EventRow;
use crate::settings::{Delivery, Settings};
use uuid::Uuid;

/// How a failed write must be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Retry the same rows later: network, timeouts, overload, 5xx.
    #[error("transient: {0}")]
    Transient(String),
    /// The data is rejected: retrying the same rows cannot succeed.
    #[error("rejected data: {0}")]
    BadData(String),
    /// Configuration or schema problem: stop the sink.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl Failure {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Transient(_) => "transient",
            Failure::BadData(_) => "bad_data",
            Failure::Fatal(_) => "fatal",
        }
    }
}

/// ClickHouse error codes whose meaning is "these rows are bad".
const BAD_DATA_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    376, // CANNOT_PARSE_UUID
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    469, // VIOLATED_CONSTRAINT
];

/// ClickHouse error codes that mean "the sink is misconfigured or the schema is wrong".
const FATAL_CODES: &[u32] = &[
    16,  // NO_SUCH_COLUMN_IN_TABLE
    47,  // UNKNOWN_IDENTIFIER
    62,  // SYNTAX_ERROR (of the sink's own INSERT: a bug or a schema problem)
    60,  // UNKNOWN_TABLE
    81,  // UNKNOWN_DATABASE
    164, // READONLY
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
];

/// The code in a ClickHouse error message (`Code: 252. DB::Exception: ...`).
pub fn error_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Classifies a ClickHouse client error. Unknown server errors are transient: retrying is
/// safe (deduplication tokens make a repeated insert harmless) and never loses data.
pub fn classify(error: &ChError) -> Failure {
    let text = error.to_string();
    match error {
        ChError::BadResponse(message) => match error_code(message) {
            Some(code) if BAD_DATA_CODES.contains(&code) => Failure::BadData(text),
            Some(code) if FATAL_CODES.contains(&code) => Failure::Fatal(text),
            _ => Failure::Transient(text),
        },
        ChError::SchemaMismatch(_) | ChError::InvalidParams(_) | ChError::Unsupported(_) => {
            Failure::Fatal(text)
        }
        // Network, timeouts, (de)compression of a response, anything else: try again.
        _ => Failure::Transient(text),
    }
}

/// Where rows go. One call = one INSERT of all `rows`.
pub trait Writer: Send + Sync + 'static {
    /// Inserts `rows`; with a `token`, an insert repeating an earlier token is a no-op.
    fn insert(
        &self,
        rows: &[EventRow],
        token: Option<&str>,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Offsets of `partition` from `from` on that the table already holds, with the event id
    /// stored at each (for replays: the sink skips them after checking the ids match).
    fn stored_offsets(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> impl Future<Output = Result<BTreeMap<i64, Uuid>, Failure>> + Send;
}

/// One stored offset and the event stored at it.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct StoredOffset {
    kafka_offset: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
}

/// Inserts into ClickHouse over HTTP (RowBinary, LZ4) with the official client.
#[derive(Clone)]
pub struct ClickHouseWriter {
    client: Client,
    table: String,
    progress_table: String,
    database: String,
    delivery: Delivery,
    insert_timeout: Duration,
}

/// The progress table fed by a materialized view from the events table (schema.sql).
pub const PROGRESS_TABLE: &str = "kafka_progress";

impl ClickHouseWriter {
    pub fn new(settings: &Settings) -> ClickHouseWriter {
        let client = Client::default()
            .with_url(&settings.clickhouse_url)
            .with_user(&settings.clickhouse_user)
            .with_password(&settings.clickhouse_password)
            .with_database(&settings.database)
            // Deduplication tokens are checked synchronously only for plain inserts.
            .with_setting("async_insert", "0");
        ClickHouseWriter {
            client,
            table: settings.table.clone(),
            progress_table: PROGRESS_TABLE.to_owned(),
            database: settings.database.clone(),
            delivery: settings.delivery,
            insert_timeout: Duration::from_millis(settings.insert_timeout_ms),
        }
    }

    /// Refuses to start when the table is missing or the settings exactly-once relies on
    /// are off. Transient failures (ClickHouse not up yet) are returned as such.
    pub async fn check_startup(&self) -> Result<(), Failure> {
        let engine: Option<String> = self
            .client
            .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(&self.database)
            .bind(&self.table)
            .fetch_optional()
            .await
            .map_err(|e| classify(&e))?;
        let Some(engine) = engine else {
            return Err(Failure::Fatal(format!(
                "table {}.{} does not exist: apply clickhouse/schema.sql",
                self.database, self.table
            )));
        };
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
            .client
            .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
            .bind(&self.database)
            .bind(&self.progress_table)
            .fetch_one()
            .await
            .map_err(|e| classify(&e))?;
        if progress == 0 {
            return Err(Failure::Fatal(format!(
                "exactly-once needs the progress table {}.{} (clickhouse/schema.sql, section \
                 \"Exactly-once support\"), or run with --delivery at-least-once",
                self.database, self.progress_table
            )));
        }
        Ok(())
    }
}

impl Writer for ClickHouseWriter {
    async fn insert(&self, rows: &[EventRow], token: Option<&str>) -> Result<(), Failure> {
        let client = match token {
            Some(token) => self
                .client
                .clone()
                .with_setting("insert_deduplication_token", token)
                .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1"),
            // Without a token ClickHouse would deduplicate by a hash of the data, which drops
            // legitimately identical batches; at-least-once means no deduplication at all.
            None => self.client.clone().with_setting("insert_deduplicate", "0"),
        };
        let work = async {
            let mut insert = client.insert::<EventRow>(&self.table).await?;
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        };
        match tokio::time::timeout(self.insert_timeout, work).await {
            Ok(result) => result.map_err(|e| classify(&e)),
            Err(_) => Err(Failure::Transient(format!(
                "insert did not finish within insert_timeout_ms = {}",
                self.insert_timeout.as_millis()
            ))),
        }
    }

    async fn stored_offsets(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<BTreeMap<i64, Uuid>, Failure> {
        // The progress view answers cheaply whether anything from `from` on is stored at all;
        // only then (after a crash between insert and commit) the offsets are read.
        let max: Option<i64> = self
            .client
            .query(&format!(
                "SELECT maxOrNull(max_offset) FROM {} WHERE kafka_topic = ? AND kafka_partition = ?",
                self.progress_table
            ))
            .bind(topic)
            .bind(partition)
            .fetch_one()
            .await
            .map_err(|e| classify(&e))?;
        match max {
            Some(max) if max >= from => self
                .client
                .query(&format!(
                    "SELECT kafka_offset, any(event_id) AS event_id FROM {} \
                     WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset BETWEEN ? AND ? \
                     GROUP BY kafka_offset",
                    self.table
                ))
                .bind(topic)
                .bind(partition)
                .bind(from)
                .bind(max)
                .fetch_all::<StoredOffset>()
                .await
                .map(|stored| {
                    stored
                        .into_iter()
                        .map(|s| (s.kafka_offset, s.event_id))
                        .collect()
                })
                .map_err(|e| classify(&e)),
            _ => Ok(BTreeMap::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(message: &str) -> ChError {
        ChError::BadResponse(message.to_owned())
    }

    #[test]
    fn clickhouse_errors_are_classified() {
        let cases = [
            (
                "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)",
                "transient",
            ),
            (
                "Code: 241. DB::Exception: Memory limit exceeded. (MEMORY_LIMIT_EXCEEDED)",
                "transient",
            ),
            (
                "Code: 159. DB::Exception: Timeout exceeded. (TIMEOUT_EXCEEDED)",
                "transient",
            ),
            (
                "Code: 202. DB::Exception: Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)",
                "transient",
            ),
            ("503 Service Unavailable", "transient"),
            (
                "Code: 27. DB::Exception: Cannot parse input. (CANNOT_PARSE_INPUT_ASSERTION_FAILED)",
                "bad_data",
            ),
            (
                "Code: 53. DB::Exception: Type mismatch. (TYPE_MISMATCH)",
                "bad_data",
            ),
            (
                "Code: 117. DB::Exception: Incorrect data. (INCORRECT_DATA)",
                "bad_data",
            ),
            (
                "Code: 469. DB::Exception: Constraint `price` is violated. (VIOLATED_CONSTRAINT)",
                "bad_data",
            ),
            (
                "Code: 60. DB::Exception: Table clickstream.events does not exist. (UNKNOWN_TABLE)",
                "fatal",
            ),
            (
                "Code: 81. DB::Exception: Database nope does not exist. (UNKNOWN_DATABASE)",
                "fatal",
            ),
            (
                "Code: 497. DB::Exception: Not enough privileges. (ACCESS_DENIED)",
                "fatal",
            ),
            (
                "Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)",
                "fatal",
            ),
        ];
        for (message, kind) in cases {
            assert_eq!(classify(&response(message)).kind(), kind, "{message}");
        }
        assert_eq!(classify(&ChError::TimedOut).kind(), "transient");
        assert_eq!(
            classify(&ChError::Network("connection refused".into())).kind(),
            "transient"
        );
        assert_eq!(
            classify(&ChError::SchemaMismatch("column x".into())).kind(),
            "fatal"
        );
    }

    #[test]
    fn error_codes_are_read_from_messages() {
        assert_eq!(error_code("Code: 252. DB::Exception: x"), Some(252));
        assert_eq!(error_code("bad response: Code: 60. DB"), Some(60));
        assert_eq!(error_code("no code here"), None);
    }
}
