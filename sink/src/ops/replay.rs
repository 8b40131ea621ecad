//! `clickstream-sink replay`: re-read a range of the topic exactly once (after a decoder fix,
//! a schema change, a bad rollup definition).
//!
//! 1. Refuses while the group has active members (the sinks must be stopped).
//! 2. Finds, per partition, the first offset at or after `--since` (or takes `--from`).
//! 3. Plans: records the range and, for every rollup, the keys (windows, sessions,
//!    partitions) the range's rows touch, in ClickHouse (`kafka_replays`,
//!    `kafka_replay_keys`), so that nothing it needs later is lost with the rows.
//! 4. Deletes the range's rows from the events table.
//! 5. Rebuilds every rollup for the recorded keys: deletes their rows and inserts the view's
//!    own SELECT over the remaining raw rows of those keys. Which column of a rollup is its
//!    key, and which expression over the raw rows gives it, is declared next to the view in
//!    clickhouse/schema.sql (`-- rebuild clickstream.<rollup>: <key> = <expression>`).
//! 6. Resets the group's committed offsets to the range's start.
//! 7. Records the replay as done. The next sink start re-inserts the range exactly once.
//!
//! Every step is recorded (`kafka_replay_steps`) and can run again: a crash between steps
//! leaves a replay that the next `replay` run finishes first, and a sink refuses to start
//! while a replay of its topic is unfinished (its rows would be missing until the reset).
//! Inserts after a replay carry a new generation in their deduplication tokens (the replay's
//! id): ClickHouse still remembers the tokens of the deleted rows and would drop them again.

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ch;
use super::kafka::OpsKafka;
use super::lease::{Lease, still_held};
use crate::SinkError;
use crate::settings::Settings;

pub use crate::rollups::{Rebuild, SCHEMA_SQL, rebuild_declarations};
use crate::rollups::{Rollup, rollups};

pub const REPLAYS_TABLE: &str = "kafka_replays";
pub const STEPS_TABLE: &str = "kafka_replay_steps";
pub const KEYS_TABLE: &str = "kafka_replay_keys";

/// The steps, in order; each is recorded once done.
pub const STEPS: [&str; 5] = ["planned", "deleted", "rebuilt", "reset", "done"];

/// Where the replay starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// The first offset of every partition at or after this time.
    Since(DateTime<Utc>),
    /// These partitions from these offsets.
    From(BTreeMap<i32, i64>),
    /// No range: finish the replay that stopped part-way (refused when there is none).
    Unfinished,
}

/// One partition of a replay.
#[derive(Debug, Clone, Serialize, clickhouse::Row, serde::Deserialize)]
pub struct PlannedPartition {
    pub kafka_partition: i32,
    pub from_offset: i64,
    /// Rows of the range in the table when planned (to delete).
    pub rows: u64,
    /// The group's committed offset when planned (-1: none) ...
    pub committed_before: i64,
    /// ... and what it is set to (-1: left alone).
    pub committed_after: i64,
}

/// A replay: planned, done, or being done.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub replay_id: u64,
    pub topic: String,
    pub group: String,
    pub partitions: Vec<PlannedPartition>,
    /// Per rollup, how many of its keys are rebuilt.
    pub keys: BTreeMap<String, u64>,
    /// Steps done before this run.
    pub steps_done_before: Vec<String>,
    /// Steps done by this run.
    pub steps_done_now: Vec<String>,
    pub dry_run: bool,
    /// Finishing an earlier run that stopped part-way.
    pub resumed: bool,
    /// A range was given, but this run finishes the earlier one as it was planned.
    pub range_not_planned: bool,
}

/// Why replay refused to start.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "consumer group `{group}` has {} active member(s) ({}): stop every sink of the group first \
         (docker compose stop sink; kubectl scale deployment/clickstream-sink --replicas=0; or \
         SIGTERM), wait until they left the group, then run this command again",
        members.len(), members.join(", ")
    )]
    ActiveMembers { group: String, members: Vec<String> },
    #[error("{0}")]
    NotConfirmed(String),
    #[error(
        "another operations run on topic `{topic}` holds the lease: `{command}` on {host} (pid {pid}), \
         started {started_s_ago:.0} s ago, last seen {seen_s_ago:.0} s ago. Run one at a time: \
         wait until it ends, then run this command again (a run that was killed holds nothing \
         {lapse_s} s after it was last seen, or at once when it ran on this machine)"
    )]
    Busy {
        command: String,
        host: String,
        pid: u32,
        started_s_ago: f64,
        seen_s_ago: f64,
        topic: String,
        lapse_s: u64,
    },
    #[error(
        "the operations lease this run wrote is not visible to its own read (asynchronous \
         inserts, or reads sent to a replica lagging behind): point clickhouse_url at one \
         server and run this command again"
    )]
    LeaseUnseen,
    #[error(
        "ClickHouse last saw this run's operations lease {since_s} s ago (renewals failing or \
         slow): it may lapse and another run take it, so this run stops before its next step. \
         Run this command again once ClickHouse answers: `replay` goes on from the steps \
         already done"
    )]
    LeaseLost { since_s: u64 },
    #[error(
        "materialized view(s) {0} cannot be rebuilt, so replay cannot keep them equal to the raw \
         table, and `verify` does not check them. A view of the sink's database writing into a \
         table of it: add `-- rebuild <database>.<rollup>: <key column> = <expression over \
         events>` next to it in clickhouse/schema.sql (see the existing ones; the declarations \
         are built into the sink: build it again). Any other view: detach it for the replay \
         (DETACH TABLE <view>; the sinks are stopped during a replay anyway), ATTACH it again \
         after, and rebuild its table's rows of the replayed range from the raw table \
         yourself.{1}"
    )]
    NotRebuilt(String, String),
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct IdRow {
    replay_id: u64,
}

/// What the sink needs to know of replays at start: the newest replay of its topic (its id
/// scopes the deduplication tokens), and one left unfinished (the sink must not start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayState {
    pub generation: u64,
    pub unfinished: Option<u64>,
}

/// Reads [`ReplayState`] (`client` is set to `database`) from the steps table alone: the
/// sink's user is granted SELECT on it and nothing else of replays (clickhouse/users.sql), and
/// ClickHouse hides the tables a user has no grant on from `system.tables`. (Requiring
/// `kafka_replays` too made every replay invisible to a sink under those grants: generation 0,
/// so the replayed rows reused their first insert's tokens and were dropped as duplicates.)
/// A steps table that does not exist yet means no replay ever ran.
pub async fn state(
    client: &clickhouse::Client,
    database: &str,
    topic: &str,
) -> Result<ReplayState, clickhouse::error::Error> {
    let tables: u64 = client
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
        .bind(database)
        .bind(STEPS_TABLE)
        .fetch_one()
        .await?;
    if tables == 0 {
        return Ok(ReplayState::default());
    }
    let planned: Vec<IdRow> = client
        .query(&format!(
            "SELECT replay_id FROM {STEPS_TABLE} WHERE kafka_topic = ? \
             GROUP BY replay_id HAVING has(groupArray(step), 'planned') \
             AND NOT has(groupArray(step), 'done') ORDER BY replay_id"
        ))
        .bind(topic)
        .fetch_all()
        .await?;
    let generation: u64 = client
        .query(&format!(
            "SELECT max(replay_id) FROM {STEPS_TABLE} WHERE kafka_topic = ? AND step = 'planned'"
        ))
        .bind(topic)
        .fetch_one()
        .await?;
    Ok(ReplayState {
        generation,
        unfinished: planned.first().map(|r| r.replay_id),
    })
}

#[derive(clickhouse::Row, serde::Serialize)]
struct StepRow<'a> {
    replay_id: u64,
    kafka_topic: &'a str,
    step: &'a str,
}

#[derive(clickhouse::Row, serde::Serialize)]
struct PlanRow<'a> {
    replay_id: u64,
    kafka_topic: &'a str,
    kafka_group: &'a str,
    kafka_partition: i32,
    from_offset: i64,
    rows: u64,
    committed_before: i64,
    committed_after: i64,
}

/// Options of one `replay` run.
#[derive(Debug, Clone)]
pub struct Options {
    pub start: Start,
    pub dry_run: bool,
    pub yes: bool,
}

/// A test's way to crash the command right after a step (`CLICKSTREAM_REPLAY_CRASH_AFTER`).
fn crash_after(step: &str) {
    if std::env::var("CLICKSTREAM_REPLAY_CRASH_AFTER").is_ok_and(|s| s == step) {
        eprintln!("replay: crashing after step `{step}` (CLICKSTREAM_REPLAY_CRASH_AFTER)");
        std::process::abort();
    }
}

/// The condition selecting a replay's rows of the events table.
fn range_condition(topic: &str, partitions: &[PlannedPartition]) -> String {
    let topic = topic.replace('\\', "\\\\").replace('\'', "\\'");
    let parts: Vec<String> = partitions
        .iter()
        .map(|p| {
            format!(
                "(kafka_partition = {} AND kafka_offset >= {})",
                p.kafka_partition, p.from_offset
            )
        })
        .collect();
    if parts.is_empty() {
        return "0".to_owned();
    }
    format!("kafka_topic = '{topic}' AND ({})", parts.join(" OR "))
}

/// Runs `replay`: plans (or finds the unfinished one), asks, and carries out every step not
/// done yet. `confirm` is asked with the plan's text unless `--yes` or `--dry-run`.
pub async fn replay(
    settings: &Settings,
    options: &Options,
    confirm: impl FnOnce(&Replay) -> bool,
) -> Result<Replay, ReplayError> {
    let client = crate::clickhouse_client::client(settings)?;
    let kafka = OpsKafka::new(settings)?;
    check_no_members(&kafka)?;
    if options.dry_run {
        return replay_range(settings, options, confirm, &client, &kafka, None).await;
    }
    let lease =
        super::lease::acquire(&client, &settings.database, &settings.topic, "replay").await?;
    let replayed = replay_range(settings, options, confirm, &client, &kafka, Some(&lease)).await;
    lease.release().await;
    replayed
}

/// `replay` once it may run.
async fn replay_range(
    settings: &Settings,
    options: &Options,
    confirm: impl FnOnce(&Replay) -> bool,
    client: &clickhouse::Client,
    kafka: &OpsKafka,
    lease: Option<&Lease>,
) -> Result<Replay, ReplayError> {
    let topic = settings.topic.clone();
    let db = format!("`{}`", settings.database);
    let events = format!("{db}.`{}`", settings.table);
    let present: u64 = ch("look for the replay tables", async {
        client
            .query("SELECT count() FROM system.tables WHERE database = ? AND name IN (?, ?, ?)")
            .bind(&settings.database)
            .bind(REPLAYS_TABLE)
            .bind(STEPS_TABLE)
            .bind(KEYS_TABLE)
            .fetch_one::<u64>()
            .await
    })
    .await?;
    if present < 3 {
        return Err(ReplayError::Usage(format!(
            "the replay tables ({REPLAYS_TABLE}, {STEPS_TABLE}, {KEYS_TABLE}) are missing in \
             database {}: apply clickhouse/schema.sql (idempotent) first",
            settings.database
        )));
    }

    let rollups = ch(
        "list the materialized views",
        rollups(client, &settings.database, &settings.table),
    )
    .await?;
    let state = state(client, &settings.database, &topic)
        .await
        .map_err(|e| super::ch_error("read the replay state", &e))?;
    let not_rebuilt: Vec<String> = rollups
        .iter()
        .filter(|r| r.rebuild.is_none())
        .map(|r| r.not_rebuilt())
        .collect();
    if !not_rebuilt.is_empty() {
        let pending = match state.unfinished {
            Some(id) => format!(
                " Replay {id} is unfinished (some of its rows may be deleted already): it \
                 resumes when replay runs again once these views are dealt with."
            ),
            None => String::new(),
        };
        return Err(Refusal::NotRebuilt(not_rebuilt.join(", "), pending).into());
    }
    let (mut replay, resumed) = match state.unfinished {
        Some(id) => (load(client, settings, id).await?, true),
        None => (
            plan(client, kafka, settings, options, state.generation).await?,
            false,
        ),
    };
    replay.resumed = resumed;
    // A range given again as it was planned (the same command run again) is that replay.
    let planned: BTreeMap<i32, i64> = replay
        .partitions
        .iter()
        .map(|p| (p.kafka_partition, p.from_offset))
        .collect();
    replay.range_not_planned = resumed
        && match &options.start {
            Start::Unfinished => false,
            Start::From(from) => *from != planned,
            Start::Since(_) => true,
        };
    replay.dry_run = options.dry_run;
    // Keys per rollup: recorded ones, or (not recorded yet) counted from the rows.
    for r in &rollups {
        let rebuild = r.rebuild.as_ref().expect("checked above");
        let n: u64 = if replay.steps_done_before.iter().any(|s| s == "planned") {
            ch("count the recorded keys", async {
                client
                    .query(&format!(
                        "SELECT uniqExact(key) FROM {db}.{KEYS_TABLE} WHERE replay_id = ? AND rollup = ?"
                    ))
                    .bind(replay.replay_id)
                    .bind(&r.target)
                    .fetch_one::<u64>()
                    .await
            })
            .await?
        } else {
            ch("count the keys the range touches", async {
                client
                    .query(&format!(
                        "SELECT uniqExact(toString({})) FROM {events} WHERE {}",
                        rebuild.expression,
                        range_condition(&topic, &replay.partitions)
                    ))
                    .fetch_one::<u64>()
                    .await
            })
            .await?
        };
        replay.keys.insert(r.target.clone(), n);
    }
    if options.dry_run {
        return Ok(replay);
    }
    if !resumed && !options.yes && !confirm(&replay) {
        return Err(Refusal::NotConfirmed("not confirmed: nothing was changed".into()).into());
    }

    let done = |step: &str| replay.steps_done_before.iter().any(|s| s == step);
    let record = |step: &'static str| {
        let client = client.clone();
        let topic = topic.clone();
        let id = replay.replay_id;
        async move {
            let mut insert = client.insert::<StepRow<'_>>(STEPS_TABLE).await?;
            insert
                .write(&StepRow {
                    replay_id: id,
                    kafka_topic: &topic,
                    step,
                })
                .await?;
            insert.end().await
        }
    };
    let mut now_done = Vec::new();
    let condition = range_condition(&topic, &replay.partitions);

    if !done("planned") {
        still_held(lease).await?;
        // The plan and every key the rows touch, before the rows go.
        let mut insert = client
            .insert::<PlanRow<'_>>(REPLAYS_TABLE)
            .await
            .map_err(|e| super::ch_error("record the plan", &e))?;
        for p in &replay.partitions {
            insert
                .write(&PlanRow {
                    replay_id: replay.replay_id,
                    kafka_topic: &topic,
                    kafka_group: &settings.group,
                    kafka_partition: p.kafka_partition,
                    from_offset: p.from_offset,
                    rows: p.rows,
                    committed_before: p.committed_before,
                    committed_after: p.committed_after,
                })
                .await
                .map_err(|e| super::ch_error("record the plan", &e))?;
        }
        insert
            .end()
            .await
            .map_err(|e| super::ch_error("record the plan", &e))?;
        record_keys(client, &db, &events, &rollups, replay.replay_id, &condition).await?;
        record("planned")
            .await
            .map_err(|e| super::ch_error("record a step", &e))?;
        now_done.push("planned".to_owned());
        crash_after("planned");
    }
    if !done("deleted") {
        still_held(lease).await?;
        check_no_members(kafka)?;
        ch("delete the range's rows", async {
            client
                .query(&format!("DELETE FROM {events} WHERE {condition}"))
                .with_setting("lightweight_deletes_sync", "2")
                .with_setting("mutations_sync", "2")
                .execute()
                .await
        })
        .await?;
        record("deleted")
            .await
            .map_err(|e| super::ch_error("record a step", &e))?;
        now_done.push("deleted".to_owned());
        crash_after("deleted");
    }
    if !done("rebuilt") {
        for r in &rollups {
            still_held(lease).await?;
            let keys = format!(
                "(SELECT key FROM {db}.{KEYS_TABLE} WHERE replay_id = {} AND rollup = '{}')",
                replay.replay_id, r.target
            );
            ch(
                "rebuild a rollup's rows of the replayed keys",
                crate::rollups::rebuild(client, &db, r, &keys),
            )
            .await?;
        }
        record("rebuilt")
            .await
            .map_err(|e| super::ch_error("record a step", &e))?;
        now_done.push("rebuilt".to_owned());
        crash_after("rebuilt");
    }
    if !done("reset") {
        still_held(lease).await?;
        check_no_members(kafka)?;
        let offsets: BTreeMap<i32, i64> = replay
            .partitions
            .iter()
            .filter(|p| p.committed_after >= 0)
            .map(|p| (p.kafka_partition, p.committed_after))
            .collect();
        if !offsets.is_empty() {
            kafka.commit(&topic, &offsets)?;
        }
        record("reset")
            .await
            .map_err(|e| super::ch_error("record a step", &e))?;
        now_done.push("reset".to_owned());
        crash_after("reset");
    }
    record("done")
        .await
        .map_err(|e| super::ch_error("record a step", &e))?;
    now_done.push("done".to_owned());
    replay.steps_done_now = now_done;
    Ok(replay)
}

pub(crate) fn check_no_members(kafka: &OpsKafka) -> Result<(), ReplayError> {
    let members = kafka.members()?;
    if members.is_empty() {
        return Ok(());
    }
    Err(Refusal::ActiveMembers {
        group: kafka.group.clone(),
        members: members
            .iter()
            .map(|m| {
                // Some brokers send neither (tansu).
                let known = |s: &str| {
                    if s.is_empty() {
                        "?".to_owned()
                    } else {
                        s.to_owned()
                    }
                };
                format!("{} on {}", known(&m.client_id), known(&m.host))
            })
            .collect(),
    }
    .into())
}

/// Records, per rollup, the keys the range's rows touch.
async fn record_keys(
    client: &clickhouse::Client,
    db: &str,
    events: &str,
    rollups: &[Rollup],
    replay_id: u64,
    condition: &str,
) -> Result<(), SinkError> {
    for r in rollups {
        let rebuild = r.rebuild.as_ref().expect("declared");
        ch("record the keys the range touches", async {
            client
                .query(&format!(
                    "INSERT INTO {db}.{KEYS_TABLE} (replay_id, rollup, key) \
                     SELECT {replay_id}, '{}', toString({}) AS key FROM {events} WHERE {condition} GROUP BY key",
                    r.target, rebuild.expression
                ))
                .with_setting("insert_deduplicate", "0")
                .execute()
                .await
        })
        .await?;
    }
    Ok(())
}

/// A new plan: the offsets per partition, rows to delete, committed offsets before/after.
async fn plan(
    client: &clickhouse::Client,
    kafka: &OpsKafka,
    settings: &Settings,
    options: &Options,
    generation: u64,
) -> Result<Replay, ReplayError> {
    let topic = &settings.topic;
    let partitions = kafka.partitions(topic)?;
    let starts: BTreeMap<i32, i64> = match &options.start {
        Start::Since(t) => {
            let mut out = BTreeMap::new();
            for &p in &partitions {
                let (earliest, _) = kafka.range(topic, p)?;
                out.insert(
                    p,
                    kafka
                        .offset_for_time(topic, p, t.timestamp_millis())?
                        .max(earliest),
                );
            }
            out
        }
        Start::From(from) => {
            for (p, &offset) in from {
                if !partitions.contains(p) {
                    return Err(ReplayError::Usage(format!(
                        "--from {p}:…: topic {topic} has no partition {p} (it has {partitions:?})"
                    )));
                }
                // Rows below the earliest offset Kafka still holds could be deleted but never
                // read again: refused, not lost.
                let (earliest, _) = kafka.range(topic, *p)?;
                if offset < earliest {
                    return Err(ReplayError::Usage(format!(
                        "--from {p}:{offset}: partition {p} of topic {topic} starts at offset \
                         {earliest} now (older messages are past retention): replay would delete \
                         the rows of offsets {offset}..{earliest} and could not read them again; \
                         use --from {p}:{earliest} or later"
                    )));
                }
            }
            from.clone()
        }
        Start::Unfinished => {
            return Err(ReplayError::Usage(
                "replay needs --since TIME or --from PARTITION:OFFSET (no replay of this topic \
                 stopped part-way, so there is none to finish)"
                    .into(),
            ));
        }
    };
    let committed = kafka.committed(topic, &partitions)?;
    let events = format!("`{}`.`{}`", settings.database, settings.table);
    let mut planned = Vec::new();
    for (&p, &from) in &starts {
        let rows: u64 = ch("count the range's rows", async {
            client
                .query(&format!(
                    "SELECT count() FROM {events} WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset >= ?"
                ))
                .bind(topic)
                .bind(p)
                .bind(from)
                .fetch_one::<u64>()
                .await
        })
        .await?;
        let before = committed.get(&p).copied().flatten();
        planned.push(PlannedPartition {
            kafka_partition: p,
            from_offset: from,
            rows,
            committed_before: before.unwrap_or(-1),
            // Never forward: what the group has not read yet stays to be read.
            committed_after: before.map_or(-1, |c| c.min(from)),
        });
    }
    Ok(Replay {
        // Above every earlier replay's, whatever this host's clock says: the highest id is the
        // generation in the sinks' deduplication tokens, and a replay that did not raise it
        // would have its rows dropped as repeats of the earlier replay's inserts.
        replay_id: (Utc::now().timestamp_millis() as u64).max(generation + 1),
        topic: topic.clone(),
        group: settings.group.clone(),
        partitions: planned,
        keys: BTreeMap::new(),
        steps_done_before: Vec::new(),
        steps_done_now: Vec::new(),
        dry_run: options.dry_run,
        resumed: false,
        range_not_planned: false,
    })
}

/// An unfinished replay, as recorded.
async fn load(
    client: &clickhouse::Client,
    settings: &Settings,
    replay_id: u64,
) -> Result<Replay, SinkError> {
    let db = &settings.database;
    let partitions: Vec<PlannedPartition> = ch("read an unfinished replay", async {
        client
            .query(&format!(
                "SELECT kafka_partition, from_offset, rows, committed_before, committed_after \
                 FROM `{db}`.{REPLAYS_TABLE} WHERE replay_id = ? AND kafka_topic = ? \
                 ORDER BY kafka_partition LIMIT 1 BY kafka_partition"
            ))
            .bind(replay_id)
            .bind(&settings.topic)
            .fetch_all::<PlannedPartition>()
            .await
    })
    .await?;
    let steps: Vec<String> = ch("read an unfinished replay's steps", async {
        client
            .query(&format!(
                "SELECT DISTINCT step FROM `{db}`.{STEPS_TABLE} WHERE replay_id = ? AND kafka_topic = ?"
            ))
            .bind(replay_id)
            .bind(&settings.topic)
            .fetch_all::<String>()
            .await
    })
    .await?;
    Ok(Replay {
        replay_id,
        topic: settings.topic.clone(),
        group: settings.group.clone(),
        partitions,
        keys: BTreeMap::new(),
        steps_done_before: STEPS
            .iter()
            .filter(|s| steps.iter().any(|d| d == *s))
            .map(|s| (*s).to_owned())
            .collect(),
        steps_done_now: Vec::new(),
        dry_run: false,
        resumed: true,
        range_not_planned: false,
    })
}

/// Why `replay` did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Asks on the terminal; without one, refuses (use `--yes`).
pub fn ask_on_terminal(replay: &Replay) -> bool {
    if !std::io::stdin().is_terminal() {
        eprintln!("replay: no terminal to confirm on: run with --yes (or --dry-run to look first)");
        return false;
    }
    eprint!("{replay}Go ahead? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok()
        && matches!(answer.trim(), "y" | "Y" | "yes" | "YES")
}

impl fmt::Display for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.dry_run {
            "plan (dry run: nothing changed)"
        } else if self.steps_done_now.iter().any(|s| s == "done") {
            "done"
        } else {
            "plan"
        };
        writeln!(
            f,
            "replay {} of topic {} (group {}): {status}{}",
            self.replay_id,
            self.topic,
            self.group,
            if self.resumed {
                ", finishing a replay that stopped part-way"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  {:>9} {:>12} {:>12} {:>16} {:>14}",
            "partition", "from offset", "rows deleted", "committed before", "committed now"
        )?;
        for p in &self.partitions {
            let show = |o: i64| if o < 0 { "-".to_owned() } else { o.to_string() };
            writeln!(
                f,
                "  {:>9} {:>12} {:>12} {:>16} {:>14}",
                p.kafka_partition,
                p.from_offset,
                p.rows,
                show(p.committed_before),
                show(p.committed_after)
            )?;
        }
        for (rollup, n) in &self.keys {
            writeln!(f, "  rollup {rollup}: {n} keys rebuilt from the raw table")?;
        }
        if self.range_not_planned {
            writeln!(
                f,
                "  note: the range on the command line is not what this run replays: it finishes \
                 replay {} as that one was planned (above); run replay again for your range",
                self.replay_id
            )?;
        }
        if !self.steps_done_before.is_empty() {
            writeln!(
                f,
                "  steps done before: {}",
                self.steps_done_before.join(", ")
            )?;
        }
        if !self.steps_done_now.is_empty() {
            writeln!(f, "  steps done now: {}", self.steps_done_now.join(", "))?;
            writeln!(
                f,
                "  next: start the sinks; they re-insert the range exactly once"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rollup_of_the_schema_declares_its_rebuild() {
        let declared = rebuild_declarations(SCHEMA_SQL);
        let targets: Vec<&str> = SCHEMA_SQL
            .lines()
            .filter(|l| l.starts_with("CREATE MATERIALIZED VIEW"))
            .filter_map(|l| l.split(" TO ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(|t| t.rsplit('.').next().unwrap_or(t))
            .collect();
        assert!(targets.len() >= 5, "{targets:?}");
        for target in targets {
            assert!(
                declared.iter().any(|d| d.table == target),
                "no `-- rebuild clickstream.{target}: ...` line in clickhouse/schema.sql"
            );
        }
        let events_1m = declared.iter().find(|d| d.table == "events_1m").unwrap();
        assert_eq!(events_1m.key, "window_start");
        assert_eq!(events_1m.expression, "toStartOfMinute(event_time)");
    }

    #[test]
    fn the_range_condition_names_each_partition_from_its_offset() {
        let p = |kafka_partition, from_offset| PlannedPartition {
            kafka_partition,
            from_offset,
            rows: 0,
            committed_before: -1,
            committed_after: -1,
        };
        assert_eq!(
            range_condition("clicks", &[p(0, 5), p(2, 7)]),
            "kafka_topic = 'clicks' AND ((kafka_partition = 0 AND kafka_offset >= 5) OR (kafka_partition = 2 AND kafka_offset >= 7))"
        );
        assert_eq!(range_condition("clicks", &[]), "0");
    }
}
