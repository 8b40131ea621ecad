//! Seeded data from the producer's simulator (fixed seed, fixed clock), written the way the sink
//! writes it: `EventRow`s, one insert per batch with a deduplication token.

use std::sync::OnceLock;

use chrono::{DateTime, Duration, DurationRound, Utc};
use clickstream_producer::simulator::{Generated, Simulator, SimulatorConfig};
use clickstream_sink::row::EventRow;
use clickstream_testkit::{apply_schema, clickhouse, unique_name};

/// Events in the shared seeded database.
pub const EVENTS: usize = 100_000;
/// Clock step between two simulated events.
pub const STEP_MS: i64 = 10;
pub const TOPIC: &str = "clickstream-events";

/// A database with the schema and [`EVENTS`] events, 5 % of them late (backdated 2 min to 6 h
/// by the simulator and inserted with the batch of their arrival).
pub struct Seeded {
    pub database: String,
    /// The simulator clock of the first and the last event.
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Wall-clock bounds of the inserts (for the insert-time panels).
    pub inserted_from: DateTime<Utc>,
    pub inserted_to: DateTime<Utc>,
}

/// A clock start two hours back, on a whole hour (well inside every TTL), shared by all tests.
pub fn base_time() -> DateTime<Utc> {
    (Utc::now() - Duration::hours(2))
        .duration_trunc(Duration::hours(1))
        .expect("truncate to the hour")
}

/// `count` simulated events from `start`, one every [`STEP_MS`], Kafka offsets from
/// `first_offset` on partition 0.
pub fn simulate(
    seed: u64,
    late_ratio: f64,
    start: DateTime<Utc>,
    count: usize,
    first_offset: i64,
) -> Vec<EventRow> {
    let mut simulator = Simulator::new(SimulatorConfig {
        seed,
        late_ratio,
        bad_ratio: 0.0,
        ..Default::default()
    });
    (0..count)
        .map(|i| {
            let now = start + Duration::milliseconds(i as i64 * STEP_MS);
            let event = match simulator.next(now) {
                Generated::Event(event) => event,
                Generated::Poison { .. } => unreachable!("bad_ratio is 0"),
            };
            // Produced when the simulator made it: late events carry an older event time.
            EventRow::new(event, TOPIC, 0, first_offset + i as i64).with_kafka_timestamp(now)
        })
        .collect()
}

/// Inserts `rows` in one insert, as the sink does: with a deduplication token that also covers
/// the materialized views.
pub async fn insert(client: &clickhouse::Client, rows: &[EventRow], token: &str) {
    let client = client
        .clone()
        .with_setting("insert_deduplication_token", token)
        .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
    let mut insert = client
        .insert::<EventRow>("events")
        .await
        .expect("start insert");
    for row in rows {
        insert.write(row).await.expect("write row");
    }
    insert.end().await.expect("end insert");
}

/// The shared seeded database, created once per test binary. Seeding runs on a thread with its
/// own runtime, so no test's runtime owns the connections it used.
pub fn seeded() -> &'static Seeded {
    static SEEDED: OnceLock<Seeded> = OnceLock::new();
    SEEDED.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(seed_database())
        })
        .join()
        .expect("seeding thread")
    })
}

async fn seed_database() -> Seeded {
    let database = unique_name("it_dash_seeded");
    let client = apply_schema(&clickhouse(), &database).await;
    let start = base_time();
    let rows = simulate(42, 0.05, start, EVENTS, 0);
    let inserted_from = Utc::now();
    for (i, batch) in rows.chunks(10_000).enumerate() {
        insert(&client, batch, &format!("{TOPIC}:0:{i}")).await;
    }
    let inserted_to = Utc::now();
    Seeded {
        database,
        start,
        end: start + Duration::milliseconds((EVENTS as i64 - 1) * STEP_MS),
        inserted_from,
        inserted_to,
    }
}

/// A client for the seeded database, for the calling test's runtime.
pub fn seeded_client() -> (clickhouse::Client, &'static Seeded) {
    let seeded = seeded();
    (clickhouse().with_database(&seeded.database), seeded)
}
