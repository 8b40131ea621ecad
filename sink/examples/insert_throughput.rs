//! How fast the sink's INSERT path is against the ClickHouse at `CLICKHOUSE_URL`: the sink's
//! own writer (official crate, RowBinary, LZ4, deduplication token) inserts simulated events in
//! batches into a fresh database with the real schema (rollup views included).
//!
//! `cargo run --release -p clickstream-sink --example insert_throughput -- [ROWS] [BATCH] [bare]`
//! (defaults 1,000,000 rows in batches of 100,000; `bare`: the events table alone, without the
//! rollup views, to see the endpoint's own cost). Prints one JSON line.

use std::time::Instant;

use chrono::Utc;
use clickstream_producer::simulator::{Generated, Simulator, SimulatorConfig};
use clickstream_sink::Settings;
use clickstream_sink::row::EventRow;
use clickstream_sink::rows::Rows;
use clickstream_sink::writer::{ClickHouseWriter, Writer};
use clickstream_testkit::{
    apply_schema, clickhouse, clickhouse_url, schema_statements, unique_name,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let batch: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let bare = args.next().as_deref() == Some("bare");
    anyhow::ensure!(batch > 0, "BATCH must be positive");

    let database = unique_name("bench_insert");
    if bare {
        let events_table = format!("CREATE TABLE IF NOT EXISTS {database}.events\n");
        for statement in schema_statements(&database)
            .iter()
            .filter(|s| s.starts_with("CREATE DATABASE") || s.starts_with(&events_table))
        {
            clickhouse().query(statement).execute().await?;
        }
    } else {
        apply_schema(&clickhouse(), &database).await;
    }
    let settings = Settings {
        clickhouse_url: clickhouse_url(),
        database: database.clone(),
        ..Settings::default()
    };
    let writer = ClickHouseWriter::new(&settings).expect("ClickHouse client");
    let layout = writer
        .load_layout()
        .await
        .map_err(|e| anyhow::anyhow!("table structure: {e:?}"))?;

    let mut simulator = Simulator::new(SimulatorConfig::default());
    let now = Utc::now();
    let events: Vec<EventRow> = (0..rows)
        .map(|offset| match simulator.next(now) {
            Generated::Event(event) => EventRow::new(event, "bench", 0, offset as i64),
            Generated::Poison { .. } => unreachable!("bad_ratio is 0"),
        })
        .collect();

    let started = Instant::now();
    let mut slowest = 0.0_f64;
    for (n, chunk) in events.chunks(batch).enumerate() {
        let token = format!("bench:0:{}-{}", n * batch, n * batch + chunk.len() - 1);
        let one = Instant::now();
        let mut rows = Rows::default();
        for row in chunk {
            rows.push(|| layout.clone(), &row.as_row_ref());
        }
        let rows = rows.seal().expect("a non-empty chunk");
        let all: Vec<usize> = (0..rows.len()).collect();
        writer
            .insert(&rows, &all, Some(&token))
            .await
            .map_err(|e| anyhow::anyhow!("insert: {e:?}"))?;
        slowest = slowest.max(one.elapsed().as_secs_f64());
    }
    let seconds = started.elapsed().as_secs_f64();

    let stored: u64 = clickhouse()
        .query(&format!("SELECT count() FROM {database}.events"))
        .fetch_one()
        .await?;
    anyhow::ensure!(stored == rows as u64, "{stored} rows stored of {rows}");
    clickhouse()
        .query(&format!("DROP DATABASE {database}"))
        .execute()
        .await?;
    println!(
        "{}",
        serde_json::json!({
            "clickhouse_url": clickhouse_url(),
            "rows": rows,
            "batch_rows": batch,
            "rollup_views": !bare,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "rows_per_s": (rows as f64 / seconds).round(),
            "slowest_insert_s": (slowest * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
