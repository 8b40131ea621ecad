//! `clickstream-sink dlq inspect` and `clickstream-sink dlq replay`.
//!
//! - **inspect**: what the dead-letter topic holds for the sink's topic: counts by reason and
//!   by hour, a few samples per reason, repeats (a letter written again for the same source
//!   offset, e.g. after a crash) counted once.
//! - **replay**: decodes the letters again with the current contract and settings; events
//!   valid now are inserted under their original source topic, partition and offset, exactly
//!   once: offsets already stored are skipped, each insert carries a deduplication token, and
//!   the table `dead_letter_replays` records which letters were replayed (written before the
//!   rows, so `verify` reports them as stored, not as stored *and* dead-lettered). A second
//!   run adds nothing. Letters still invalid are reported by reason; rows ClickHouse rejects
//!   again are reported with its error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use rdkafka::message::Message;
use serde::Serialize;

use super::kafka::{OpsKafka, headers_of};
use super::lease::{Lease, still_held};
use super::replay::ReplayError;
use super::{ch, ch_error};
use crate::SinkError;
use crate::flush::{FNV_START, fnv};
use crate::rollups::TouchedKeys;
use crate::row::RowRef;
use crate::rows::Sealed;
use crate::settings::Settings;
use crate::writer::{ClickHouseWriter, Failure, Writer};

/// Where a dead letter's message came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One message of the dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub source: Option<Source>,
    pub reason: String,
    pub error: String,
    /// When it was dead-lettered (header `dead_lettered_at`, else the letter's timestamp).
    pub at: Option<DateTime<Utc>>,
    /// The original message's timestamp (header `source_timestamp`, else the letter's own).
    pub source_timestamp_ms: Option<i64>,
    pub truncated: bool,
    #[serde(skip)]
    pub payload: Option<Vec<u8>>,
}

/// Reads every letter of the dead-letter topic.
pub fn read_letters(kafka: &OpsKafka, dlq_topic: &str) -> Result<Vec<Letter>, SinkError> {
    let messages = kafka.read_all(dlq_topic)?;
    Ok(messages
        .iter()
        .map(|m| {
            let headers = headers_of(m);
            let source = match (
                headers.get("source_topic"),
                headers.get("source_partition").and_then(|p| p.parse().ok()),
                headers.get("source_offset").and_then(|o| o.parse().ok()),
            ) {
                (Some(topic), Some(partition), Some(offset)) => Some(Source {
                    topic: topic.clone(),
                    partition,
                    offset,
                }),
                _ => None,
            };
            let own = m.timestamp().to_millis();
            Letter {
                source,
                reason: headers.get("reason").cloned().unwrap_or_default(),
                error: headers.get("error").cloned().unwrap_or_default(),
                at: headers
                    .get("dead_lettered_at")
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .or_else(|| own.and_then(DateTime::from_timestamp_millis)),
                source_timestamp_ms: headers
                    .get("source_timestamp")
                    .and_then(|t| t.parse().ok())
                    .or(own),
                truncated: headers
                    .get("payload_truncated")
                    .is_some_and(|t| t == "true"),
                payload: m.payload().map(<[u8]>::to_vec),
            }
        })
        .collect())
}

/// The letters of `topic`, once per source offset (the last written wins), filtered.
fn letters_of(
    letters: Vec<Letter>,
    topic: &str,
    reasons: &[String],
    since: Option<DateTime<Utc>>,
) -> (Vec<Letter>, u64) {
    let mut once: BTreeMap<Source, Letter> = BTreeMap::new();
    let mut repeats = 0;
    for letter in letters {
        let Some(source) = letter.source.clone() else {
            continue;
        };
        if source.topic != topic
            || (!reasons.is_empty() && !reasons.contains(&letter.reason))
            || since.is_some_and(|s| letter.at.is_some_and(|at| at < s))
        {
            continue;
        }
        if once.insert(source, letter).is_some() {
            repeats += 1;
        }
    }
    (once.into_values().collect(), repeats)
}

/// A sample letter of a reason.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub source: String,
    pub at: Option<DateTime<Utc>>,
    pub error: String,
    pub payload: String,
}

/// What `dlq inspect` found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub dead_letter_topic: String,
    pub topic: String,
    /// Letters of the topic, once per source offset.
    pub letters: u64,
    /// Letters written again for a source offset already lettered.
    pub repeats: u64,
    /// Letters without source headers, of other topics, or not selected by `--reason` /
    /// `--since`.
    pub other: u64,
    pub by_reason: BTreeMap<String, u64>,
    /// Per hour (UTC, `2026-11-30 10:00`), letters per reason.
    pub by_hour: BTreeMap<String, BTreeMap<String, u64>>,
    pub samples: BTreeMap<String, Vec<Sample>>,
    /// Letters replayed into the table (`dlq replay`): marked as replayed, and their row
    /// stored.
    pub replayed: u64,
    /// Letters marked as replayed whose row is not stored: ClickHouse refused them at their
    /// replay (a view, bad data, too big), or the run stopped before their insert. `dlq
    /// replay` tries them again while they are valid.
    pub marked_not_stored: u64,
}

fn shorten(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `dlq inspect`.
pub async fn inspect(
    settings: &Settings,
    reasons: &[String],
    since: Option<DateTime<Utc>>,
    samples: usize,
) -> Result<Inspection, SinkError> {
    let kafka = OpsKafka::new(settings)?;
    let all = read_letters(&kafka, &settings.dlq_topic)?;
    let total = all.len() as u64;
    let (letters, repeats) = letters_of(all, &settings.topic, reasons, since);
    let replayed = replayed_offsets(settings).await?;
    let mut inspection = Inspection {
        dead_letter_topic: settings.dlq_topic.clone(),
        topic: settings.topic.clone(),
        letters: letters.len() as u64,
        repeats,
        other: total - letters.len() as u64 - repeats,
        by_reason: BTreeMap::new(),
        by_hour: BTreeMap::new(),
        samples: BTreeMap::new(),
        replayed: 0,
        marked_not_stored: 0,
    };
    // Marked letters, by partition: replayed only once their row is there too (a letter a
    // view refused keeps its mark).
    let mut marked: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for letter in &letters {
        let source = letter.source.as_ref().expect("filtered on source");
        if replayed.contains(&(source.partition, source.offset)) {
            marked
                .entry(source.partition)
                .or_default()
                .push(source.offset);
        }
        *inspection
            .by_reason
            .entry(letter.reason.clone())
            .or_default() += 1;
        let hour = letter.at.map_or_else(
            || "unknown".to_owned(),
            |t| {
                t.with_minute(0)
                    .and_then(|t| t.with_second(0))
                    .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:00").to_string())
            },
        );
        *inspection
            .by_hour
            .entry(hour)
            .or_default()
            .entry(letter.reason.clone())
            .or_default() += 1;
        let list = inspection.samples.entry(letter.reason.clone()).or_default();
        if list.len() < samples {
            list.push(Sample {
                source: format!("{}[{}]@{}", source.topic, source.partition, source.offset),
                at: letter.at,
                error: shorten(&letter.error, 300),
                payload: shorten(
                    &String::from_utf8_lossy(letter.payload.as_deref().unwrap_or_default()),
                    300,
                ),
            });
        }
    }
    if !marked.is_empty() {
        let writer = ClickHouseWriter::new(settings)?;
        for (partition, offsets) in marked {
            let stored = writer
                .stored_among(&settings.topic, partition, &offsets)
                .await
                .map_err(SinkError::clickhouse(
                    "look up whether the replayed letters are stored",
                ))?;
            let here = offsets.iter().filter(|o| stored.contains(o)).count() as u64;
            inspection.replayed += here;
            inspection.marked_not_stored += offsets.len() as u64 - here;
        }
    }
    Ok(inspection)
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "dead-letter topic {}: {} letters for topic {} ({} repeats counted once, {} already replayed; {} other letters: of other topics, without source, or not selected)",
            self.dead_letter_topic,
            self.letters,
            self.topic,
            self.repeats,
            self.replayed,
            self.other
        )?;
        if self.marked_not_stored > 0 {
            writeln!(
                f,
                "{} letters are marked as replayed but their rows are not stored (ClickHouse refused them at their replay, or the run stopped before their insert): `clickstream-sink dlq replay` tries them again while they are valid",
                self.marked_not_stored
            )?;
        }
        writeln!(f, "by reason:")?;
        for (reason, n) in &self.by_reason {
            writeln!(f, "  {n:>8}  {reason}")?;
        }
        writeln!(f, "by hour (UTC):")?;
        for (hour, reasons) in &self.by_hour {
            let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
            writeln!(f, "  {hour}  {}", parts.join(", "))?;
        }
        for (reason, samples) in &self.samples {
            writeln!(f, "samples of {reason}:")?;
            for s in samples {
                writeln!(f, "  {}  {}", s.source, s.error)?;
                writeln!(f, "      payload: {}", s.payload)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Coordinates {
    kafka_partition: i32,
    kafka_offset: i64,
}

/// The table recording replayed letters (clickhouse/schema.sql).
pub const REPLAYED_TABLE: &str = "dead_letter_replays";

/// Source offsets of the sink's topic that `dlq replay` inserted (or is inserting).
pub async fn replayed_offsets(settings: &Settings) -> Result<BTreeSet<(i32, i64)>, SinkError> {
    let client = crate::clickhouse_client::client(settings)?;
    let exists: u64 = ch("look for the dead-letter replay table", async {
        client
            .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
            .bind(&settings.database)
            .bind(REPLAYED_TABLE)
            .fetch_one::<u64>()
            .await
    })
    .await?;
    if exists == 0 {
        return Ok(BTreeSet::new());
    }
    let rows: Vec<Coordinates> = ch("read the replayed letters", async {
        client
            .query(&format!(
                "SELECT DISTINCT kafka_partition, kafka_offset FROM `{}`.{REPLAYED_TABLE} WHERE kafka_topic = ?",
                settings.database
            ))
            .bind(&settings.topic)
            .fetch_all::<Coordinates>()
            .await
    })
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.kafka_partition, r.kafka_offset))
        .collect())
}

/// What `dlq replay` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Replayed {
    pub dry_run: bool,
    /// Letters of the topic considered (once per source offset).
    pub letters: u64,
    /// Inserted now.
    pub inserted: u64,
    /// Already in the table (an earlier run, or the sink itself): nothing added.
    pub already_stored: u64,
    /// Still invalid, by reason.
    pub still_invalid: BTreeMap<String, u64>,
    /// Rows ClickHouse rejected again (source, error).
    pub rejected: Vec<(String, String)>,
    /// Letters whose payload was cut to fit and whose message Kafka no longer holds.
    pub unreadable: Vec<String>,
    /// Rows a refused insert had written before a view failed, deleted before their letters
    /// went in again (in smaller inserts) or were reported rejected.
    pub partial_rows_removed: u64,
    /// Rollup keys those rows touched, rebuilt from the table once the letters were in.
    pub rollup_keys_rebuilt: u64,
    /// Views fed before the failing one that cannot be rebuilt (each with why): they count
    /// the removed rows twice once those go in again.
    pub not_rebuilt: Vec<String>,
    /// Rollup rebuilds recorded by an earlier run or a sink stopped part-way, done first.
    pub earlier_rebuilds: u64,
    /// Such records left to the sinks, because some are of rows read again.
    pub earlier_rebuilds_left: u64,
}

impl Replayed {
    /// Whether every letter considered is now stored (and no view counts one twice).
    pub fn ok(&self) -> bool {
        self.still_invalid.is_empty()
            && self.rejected.is_empty()
            && self.unreadable.is_empty()
            && self.not_rebuilt.is_empty()
    }
}

/// The rollup keys of one partition's rows that refused inserts left: recorded in ClickHouse
/// under `id` before the rows are deleted (a replay stopped before its rebuild leaves them to
/// the partition's next sink, as a sink's own repair does), rebuilt once the letters are in.
struct Repair {
    id: u64,
    keys: TouchedKeys,
    /// The progress rollup's maximum offset of the partition before the replay's inserts:
    /// a rebuild must not lower it (rows deleted by hand above it may be read again, see
    /// [`TouchedKeys::progress_floor`]).
    floor: Option<i64>,
    /// Each letter's newest mark (milliseconds): part of its insert token.
    epochs: BTreeMap<i64, i64>,
}

#[derive(clickhouse::Row, serde::Serialize)]
struct ReplayMark<'a> {
    kafka_topic: &'a str,
    kafka_partition: i32,
    kafka_offset: i64,
    reason: &'a str,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    replayed_at: DateTime<Utc>,
}

/// Marks letters as replayed at `at` (milliseconds): the intent, before their insert.
async fn write_marks(
    client: &clickhouse::Client,
    letters: &[(&Source, &str)],
    at: i64,
) -> Result<(), SinkError> {
    if letters.is_empty() {
        return Ok(());
    }
    let replayed_at = DateTime::from_timestamp_millis(at).unwrap_or_else(Utc::now);
    let mut marks = client
        .insert::<ReplayMark<'_>>(REPLAYED_TABLE)
        .await
        .map_err(|e| ch_error("record the replayed letters", &e))?;
    for (source, reason) in letters {
        marks
            .write(&ReplayMark {
                kafka_topic: &source.topic,
                kafka_partition: source.partition,
                kafka_offset: source.offset,
                reason,
                replayed_at,
            })
            .await
            .map_err(|e| ch_error("record the replayed letters", &e))?;
    }
    marks
        .end()
        .await
        .map_err(|e| ch_error("record the replayed letters", &e))
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct MarkEpoch {
    kafka_offset: i64,
    epoch: i64,
}

/// The newest mark of each of these offsets of `partition` (milliseconds), for those marked.
async fn mark_epochs(
    client: &clickhouse::Client,
    settings: &Settings,
    partition: i32,
    offsets: &[i64],
) -> Result<BTreeMap<i64, i64>, SinkError> {
    let mut epochs = BTreeMap::new();
    for chunk in offsets.chunks(1_000) {
        let condition = chunk
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let rows: Vec<MarkEpoch> = ch("read the replayed letters", async {
            client
                .query(&format!(
                    "SELECT kafka_offset, toInt64(toUnixTimestamp64Milli(max(replayed_at))) AS epoch \
                     FROM `{}`.{REPLAYED_TABLE} WHERE kafka_topic = ? AND kafka_partition = ? \
                     AND kafka_offset IN ({condition}) GROUP BY kafka_offset",
                    settings.database
                ))
                .bind(&settings.topic)
                .bind(partition)
                .fetch_all::<MarkEpoch>()
                .await
        })
        .await?;
        epochs.extend(rows.into_iter().map(|r| (r.kafka_offset, r.epoch)));
    }
    Ok(epochs)
}

/// `dlq replay`.
pub async fn replay(
    settings: &Settings,
    reasons: &[String],
    since: Option<DateTime<Utc>>,
    dry_run: bool,
) -> Result<Replayed, ReplayError> {
    let kafka = OpsKafka::new(settings)?;
    if dry_run {
        return replay_letters(settings, &kafka, reasons, since, None).await;
    }
    // A refused insert's repair rebuilds rollup keys (delete, then insert the view's query
    // over the table): a sink's insert in between, or another run's, would count twice. As
    // for `replay`.
    super::replay::check_no_members(&kafka)?;
    let client = crate::clickhouse_client::client(settings)?;
    let lease =
        super::lease::acquire(&client, &settings.database, &settings.topic, "dlq replay").await?;
    let replayed = replay_letters(settings, &kafka, reasons, since, Some(&lease)).await;
    lease.release().await;
    replayed
}

/// `dlq replay` once it may run (`lease`: held; `None`: a dry run).
async fn replay_letters(
    settings: &Settings,
    kafka: &OpsKafka,
    reasons: &[String],
    since: Option<DateTime<Utc>>,
    lease: Option<&Lease>,
) -> Result<Replayed, ReplayError> {
    let dry_run = lease.is_none();
    let client = crate::clickhouse_client::client(settings)?;
    let writer = ClickHouseWriter::new(settings)?;
    writer
        .check_startup()
        .await
        .map_err(SinkError::clickhouse("check the table"))?;
    // Rebuilds recorded and not done (an earlier run or a sink stopped part-way): done first,
    // as a sink taking the partitions over would (none runs), so that letters inserted again
    // below are counted once. Not records of rows read again (after a group reset): a sink
    // killed right after recording them may have left their INSERT running on the server,
    // which only the sink re-reading them settles.
    let mut earlier_rebuilds = 0;
    let mut earlier_rebuilds_left = 0;
    if !dry_run {
        let partitions = kafka.partitions(&settings.topic)?;
        let (ids, keys) = writer
            .pending_rebuilds(&settings.topic, &partitions)
            .await
            .map_err(SinkError::clickhouse(
                "read the rollup rebuilds left (kafka_pending_rebuilds)",
            ))?;
        if !keys.reread.is_empty() {
            earlier_rebuilds_left = ids.len() as u64;
        } else if !ids.is_empty() {
            still_held(lease).await?;
            if !keys.is_empty() {
                writer
                    .rebuild_rollups(&keys)
                    .await
                    .map_err(SinkError::clickhouse(
                        "rebuild the rollup keys recorded in kafka_pending_rebuilds",
                    ))?;
            }
            writer
                .forget_rebuilds(&settings.topic, &ids)
                .await
                .map_err(SinkError::clickhouse("forget the rollup rebuilds done"))?;
            earlier_rebuilds = ids.len() as u64;
        }
    }
    let (letters, _) = letters_of(
        read_letters(kafka, &settings.dlq_topic)?,
        &settings.topic,
        reasons,
        since,
    );
    let mut out = Replayed {
        dry_run,
        letters: letters.len() as u64,
        earlier_rebuilds,
        earlier_rebuilds_left,
        ..Replayed::default()
    };
    let limits = settings.limits();
    // Payloads cut to fit the dead-letter topic are read from the source topic again.
    let mut payloads: BTreeMap<Source, Vec<u8>> = BTreeMap::new();
    for letter in &letters {
        let source = letter.source.clone().expect("filtered on source");
        if letter.truncated {
            let mut found = None;
            kafka.read(&source.topic, &[(source.partition, source.offset)], |m| {
                if m.offset() == source.offset {
                    found = m.payload().map(<[u8]>::to_vec);
                }
                m.offset() < source.offset
            })?;
            match found {
                Some(p) => {
                    payloads.insert(source, p);
                }
                None => out.unreadable.push(format!(
                    "{}[{}]@{}: payload cut to fit the dead-letter topic, and the topic no longer holds the message",
                    source.topic, source.partition, source.offset
                )),
            }
        } else {
            payloads.insert(source, letter.payload.clone().unwrap_or_default());
        }
    }
    // Decode with today's contract, against the original message's time.
    let mut valid: BTreeMap<i32, Vec<(Source, &Letter)>> = BTreeMap::new();
    for letter in &letters {
        let source = letter.source.clone().expect("filtered on source");
        let Some(payload) = payloads.get(&source) else {
            continue;
        };
        let at = letter
            .source_timestamp_ms
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        match clickstream_event::decode_ref(Some(payload), &limits, at) {
            Ok(_) => valid
                .entry(source.partition)
                .or_default()
                .push((source, letter)),
            Err(rejection) => {
                *out.still_invalid
                    .entry(rejection.reason.as_str().to_owned())
                    .or_default() += 1;
            }
        }
    }
    for (partition, entries) in valid {
        let offsets: Vec<i64> = entries.iter().map(|(s, _)| s.offset).collect();
        let stored = writer
            .stored_among(&settings.topic, partition, &offsets)
            .await
            .map_err(SinkError::clickhouse("look up stored offsets"))?;
        let todo: Vec<&(Source, &Letter)> = entries
            .iter()
            .filter(|(s, _)| !stored.contains(&s.offset))
            .collect();
        out.already_stored += (entries.len() - todo.len()) as u64;
        if todo.is_empty() || dry_run {
            out.inserted += if dry_run { todo.len() as u64 } else { 0 };
            continue;
        }
        still_held(lease).await?;
        // Record the intent first: from now on these letters count as replayed, and a crash
        // before the insert is finished by the next run (it finds them not stored). A letter
        // marked by an earlier run keeps its mark, and so its insert token: an insert of that
        // run that landed after it stopped is not doubled ([`letters_token`]).
        let todo_offsets: Vec<i64> = todo.iter().map(|(s, _)| s.offset).collect();
        let mut epochs = mark_epochs(&client, settings, partition, &todo_offsets).await?;
        let now = Utc::now().timestamp_millis();
        let unmarked: Vec<(&Source, &str)> = todo
            .iter()
            .filter(|(s, _)| !epochs.contains_key(&s.offset))
            .map(|(s, l)| (s, l.reason.as_str()))
            .collect();
        write_marks(&client, &unmarked, now).await?;
        for (source, _) in &unmarked {
            epochs.insert(source.offset, now);
        }
        let floor = writer
            .max_stored_offset(&settings.topic, partition)
            .await
            .map_err(SinkError::clickhouse("read the progress rollup"))?;
        let mut repair = Repair {
            id: 0,
            keys: TouchedKeys::default(),
            floor,
            epochs,
        };
        let inserter = Inserter {
            writer: &writer,
            client: &client,
            settings,
            payloads: &payloads,
            limits: &limits,
        };
        for chunk in todo.chunks(1_000) {
            still_held(lease).await?;
            inserter.insert_chunk(chunk, &mut repair, &mut out).await?;
        }
        if !repair.keys.is_empty() {
            // A sink started meanwhile would race the rebuild: it takes the record over.
            still_held(lease).await?;
            super::replay::check_no_members(kafka)?;
            writer.rebuild_rollups(&repair.keys).await.map_err(SinkError::clickhouse(
                "rebuild the rollup keys of refused inserts (recorded in kafka_pending_rebuilds: a sink taking the partition over rebuilds them)",
            ))?;
            out.rollup_keys_rebuilt += repair.keys.keys() as u64;
        }
        if repair.id != 0 {
            writer
                .forget_rebuilds(&settings.topic, &[repair.id])
                .await
                .map_err(SinkError::clickhouse("forget the rollup rebuilds done"))?;
        }
    }
    Ok(out)
}

/// What inserting the letters of one partition needs: the clients, the settings, and every
/// letter's payload (one cut to fit the dead-letter topic read again from the source topic).
struct Inserter<'a> {
    writer: &'a ClickHouseWriter,
    client: &'a clickhouse::Client,
    settings: &'a Settings,
    payloads: &'a BTreeMap<Source, Vec<u8>>,
    limits: &'a clickstream_event::Limits,
}

impl Inserter<'_> {
    /// A refused INSERT may have written its rows to the table, and to the views fed before the
    /// failing one, before a view failed (ClickHouse does not roll that back): before its letters
    /// go in again or are reported rejected, those rows are deleted, their rollup keys recorded
    /// first (the same repair as the sink's own, `flush::undo_partial`).
    async fn undo_partial(
        &self,
        rows: &[RowRef<'_>],
        error: &str,
        repair: &mut Repair,
        out: &mut Replayed,
    ) -> Result<(), SinkError> {
        let (writer, topic) = (self.writer, self.settings.topic.as_str());
        let partition = rows[0].kafka_partition;
        let offsets: Vec<i64> = rows.iter().map(|r| r.kafka_offset).collect();
        // Every letter here was not stored when the replay began: what is stored now, this
        // replay's refused insert left.
        let left: Vec<i64> = writer
            .stored_among(topic, partition, &offsets)
            .await
            .map_err(SinkError::clickhouse(
                "look up the rows a refused insert left",
            ))?
            .into_iter()
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        let mut touched =
            writer
                .touched_keys(topic, partition, &left)
                .await
                .map_err(SinkError::clickhouse(
                    "read the rollup keys of the rows a refused insert left",
                ))?;
        if let Some(floor) = repair.floor {
            touched.progress_floor.insert(partition, floor);
        }
        // The failing view wrote nothing: only the others count the rows twice.
        let failing = crate::flush::failed_view(error);
        for rollup in &touched.not_rebuilt {
            let line = rollup.not_rebuilt();
            if failing.as_deref().is_none_or(|f| !rollup.is(f)) && !out.not_rebuilt.contains(&line)
            {
                out.not_rebuilt.push(line);
            }
        }
        if !touched.is_empty() {
            if repair.id == 0 {
                repair.id = rand::random::<u64>() >> 1 | 1;
            }
            writer
                .note_rebuild(topic, partition, repair.id, &touched)
                .await
                .map_err(SinkError::clickhouse(
                    "record the rollup keys to rebuild (in kafka_pending_rebuilds)",
                ))?;
        }
        repair.keys.merge(touched);
        writer
            .delete_offsets(topic, partition, &left)
            .await
            .map_err(SinkError::clickhouse(
                "delete the rows a refused insert left",
            ))?;
        out.partial_rows_removed += left.len() as u64;
        Ok(())
    }

    /// Inserts one chunk of letters (one partition, increasing offsets) with a token named by
    /// its offsets; rows ClickHouse rejects are found one by one and reported.
    async fn insert_chunk(
        &self,
        chunk: &[&(Source, &Letter)],
        repair: &mut Repair,
        out: &mut Replayed,
    ) -> Result<(), SinkError> {
        let Inserter {
            writer,
            client,
            settings,
            payloads,
            limits,
        } = *self;
        let events: Vec<(Source, Option<i64>, clickstream_event::ClickEventRef<'_>)> = chunk
            .iter()
            .filter_map(|(source, letter)| {
                let at = letter
                    .source_timestamp_ms
                    .and_then(DateTime::from_timestamp_millis)
                    .unwrap_or_else(Utc::now);
                let payload = payloads.get(source)?;
                clickstream_event::decode_ref(Some(payload), limits, at)
                    .ok()
                    .map(|e| (source.clone(), letter.source_timestamp_ms, e))
            })
            .collect();
        // Under the original message's coordinates and Kafka timestamp.
        let rows: Vec<RowRef<'_>> = events
            .iter()
            .map(|(s, ts, e)| {
                RowRef::of_event(e, &s.topic, s.partition, s.offset).with_kafka_timestamp(*ts)
            })
            .collect();
        let letters: BTreeMap<i64, (&Source, &str)> = chunk
            .iter()
            .map(|(s, l)| (s.offset, (s, l.reason.as_str())))
            .collect();
        let mut pending: Vec<Vec<RowRef<'_>>> = vec![rows];
        while let Some(rows) = pending.pop() {
            if rows.is_empty() {
                continue;
            }
            let token = letters_token(&settings.topic, &rows, &repair.epochs);
            let mut attempts = 0;
            loop {
                attempts += 1;
                let layout = match writer.layout() {
                    Some(l) => l,
                    None => writer
                        .load_layout()
                        .await
                        .map_err(SinkError::clickhouse("read the table's structure"))?,
                };
                let sealed = Sealed::encode(Arc::clone(&layout), &rows);
                let all: Vec<usize> = (0..sealed.len()).collect();
                match writer.insert(&sealed, &all, Some(&token)).await {
                    Ok(()) => {
                        // Accepted, and stored: ClickHouse drops an insert whose token it has
                        // seen as a duplicate, which would be an error here (a token not renewed
                        // after a refusal, see `letters_token`), not a replayed letter.
                        let offsets: Vec<i64> = rows.iter().map(|r| r.kafka_offset).collect();
                        let partition = rows[0].kafka_partition;
                        // Looked up again after a while before it counts (a replica behind).
                        let mut missing: Vec<i64> = offsets.clone();
                        for wait_ms in [0, 1_000, 3_000] {
                            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                            let stored = writer
                                .stored_among(&settings.topic, partition, &missing)
                                .await
                                .map_err(SinkError::clickhouse("look up the replayed letters"))?;
                            missing.retain(|o| !stored.contains(o));
                            if missing.is_empty() {
                                break;
                            }
                        }
                        if !missing.is_empty() {
                            renew_marks(client, &letters, &missing, repair).await?;
                            return Err(SinkError::Inconsistent(format!(
                                "ClickHouse took {} replayed letters of partition {partition} (first: offset {}) for a duplicate of an earlier insert and did not store them; their marks are renewed: run `clickstream-sink dlq replay` again, then `clickstream-sink verify`",
                                missing.len(),
                                missing[0]
                            )));
                        }
                        out.inserted += rows.len() as u64;
                        break;
                    }
                    Err(Failure::SchemaChanged(_)) if attempts < 3 => continue,
                    Err(Failure::BadData(message) | Failure::TooBig { message, .. }) => {
                        self.undo_partial(&rows, &message, repair, out).await?;
                        // Its token is spent (the table's block stays known to ClickHouse even
                        // once deleted): these letters get a newer mark, so any later insert of
                        // them, in this run or the next, has another token. (Stopped before this,
                        // the next run's insert is taken for a duplicate: an error that renews.)
                        let offsets: Vec<i64> = rows.iter().map(|r| r.kafka_offset).collect();
                        renew_marks(client, &letters, &offsets, repair).await?;
                        if let [r] = &rows[..] {
                            out.rejected.push((
                                format!(
                                    "{}[{}]@{}",
                                    r.kafka_topic, r.kafka_partition, r.kafka_offset
                                ),
                                message,
                            ));
                        } else {
                            let half = rows.len() / 2;
                            pending.push(rows[half..].to_vec());
                            pending.push(rows[..half].to_vec());
                        }
                        break;
                    }
                    // Not retried here: an insert that timed out may still be running on the
                    // server, and a retry beside it, refused or split, could store its rows twice.
                    Err(other) => {
                        return Err(SinkError::clickhouse(
                            "insert replayed letters (an insert that timed out may still be running on the server: wait until it is done, see system.processes, then run `clickstream-sink dlq replay` again with the same options)",
                        )(other));
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Replayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would insert"
        } else {
            "inserted"
        };
        writeln!(
            f,
            "dlq replay: {} letters considered; {verb} {}; {} already stored (nothing added)",
            self.letters, self.inserted, self.already_stored
        )?;
        for (reason, n) in &self.still_invalid {
            writeln!(f, "  still invalid: {n} × {reason}")?;
        }
        for (source, error) in self.rejected.iter().take(20) {
            writeln!(
                f,
                "  rejected by ClickHouse again: {source}: {}",
                shorten(error, 200)
            )?;
        }
        for line in &self.unreadable {
            writeln!(f, "  cannot replay: {line}")?;
        }
        if self.earlier_rebuilds > 0 {
            writeln!(
                f,
                "  finished {} rollup rebuild(s) an earlier run or a stopped sink had recorded",
                self.earlier_rebuilds
            )?;
        }
        if self.earlier_rebuilds_left > 0 {
            writeln!(
                f,
                "  left {} recorded rollup rebuild(s) to the sinks (some are of rows read again after a group reset): the sinks do them at their first write to the partitions",
                self.earlier_rebuilds_left
            )?;
        }
        if self.partial_rows_removed > 0 {
            writeln!(
                f,
                "  refused inserts had written {} rows before a view failed: deleted, and {} rollup keys they touched rebuilt",
                self.partial_rows_removed, self.rollup_keys_rebuilt
            )?;
        }
        for line in &self.not_rebuilt {
            writeln!(
                f,
                "  counts some replayed rows twice (rebuild it from the raw table by hand): {line}"
            )?;
        }
        Ok(())
    }
}

/// Gives `offsets` (letters of this chunk) a mark newer than any they had: their next
/// insert has another token.
async fn renew_marks(
    client: &clickhouse::Client,
    letters: &BTreeMap<i64, (&Source, &str)>,
    offsets: &[i64],
    repair: &mut Repair,
) -> Result<(), SinkError> {
    let newest = offsets
        .iter()
        .filter_map(|o| repair.epochs.get(o))
        .max()
        .copied()
        .unwrap_or(0);
    let at = Utc::now().timestamp_millis().max(newest + 1);
    let marks: Vec<(&Source, &str)> = offsets
        .iter()
        .filter_map(|o| letters.get(o).copied())
        .collect();
    write_marks(client, &marks, at).await?;
    for offset in offsets {
        repair.epochs.insert(*offset, at);
    }
    Ok(())
}

/// The deduplication token of replayed letters (one partition): named by their offsets,
/// event ids and newest marks (`epochs`), so a retry, or a later run while the marks stand,
/// deduplicates (an insert that landed after a timeout is not doubled), while a recreated
/// topic's letters at the old offsets, other events, do not match the old replay's token
/// (see `flush::ids_mark`). A refused insert's token is spent (ClickHouse keeps knowing the
/// table's block, even deleted): its letters' marks are renewed, which renews their tokens.
fn letters_token(topic: &str, rows: &[RowRef<'_>], epochs: &BTreeMap<i64, i64>) -> String {
    let hash = rows.iter().fold(FNV_START, |h, r| {
        let epoch = epochs.get(&r.kafka_offset).copied().unwrap_or(0);
        fnv(
            fnv(fnv(h, &r.kafka_offset.to_le_bytes()), r.event_id.as_bytes()),
            &epoch.to_le_bytes(),
        )
    });
    format!(
        "dlq:{topic}:{}:{}x{hash:016x}",
        rows.first().map_or(0, |r| r.kafka_partition),
        rows.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letters_token_names_its_events_not_only_their_offsets() {
        let rows = |ids: u128| -> Vec<RowRef<'static>> {
            (10..13)
                .map(|offset| RowRef {
                    event_id: uuid::Uuid::from_u128(ids + offset as u128),
                    ..crate::rows::tests::row(offset, 0)
                })
                .collect()
        };
        let marks: BTreeMap<i64, i64> = (10..13).map(|o| (o, 1_000)).collect();
        let token = letters_token("t", &rows(1), &marks);
        assert!(token.starts_with("dlq:t:0:3x"), "{token}");
        assert_eq!(
            letters_token("t", &rows(1), &marks),
            token,
            "the same letters"
        );
        assert_ne!(
            letters_token("t", &rows(500), &marks),
            token,
            "other events"
        );
        let mut renewed = marks.clone();
        renewed.insert(11, 1_001);
        assert_ne!(
            letters_token("t", &rows(1), &renewed),
            token,
            "a renewed mark"
        );
    }
}
