//! Conformance of the ClickHouse HTTP endpoint, through the official `clickhouse` crate (and,
//! for one insert and one select, the Python `clickhouse-connect` client). Against a real
//! server (CLICKHOUSE_URL pointing at docker compose) the same tests must pass too.

use std::process::Command;

use chrono::{DateTime, TimeZone, Utc};
use clickhouse::{Client, Row, error::Error};
use clickstream_testkit::{
    Endpoint, TempDir, clickhouse, clickhouse_url, repo_root, stack_python, temp_database,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Covers the column types the events table uses.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct Sample {
    id: u64,
    #[serde(with = "clickhouse::serde::uuid")]
    uid: Uuid,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    at: DateTime<Utc>,
    name: String,
    kind: String,
    price_cents: Option<i64>,
    quantity: Option<u16>,
}

const SAMPLE_TABLE: &str = "CREATE TABLE samples (
    id UInt64, uid UUID, at DateTime64(3, 'UTC'), name String, kind LowCardinality(String),
    price_cents Nullable(Decimal(12, 2)), quantity Nullable(UInt16)
) ENGINE = MergeTree ORDER BY id SETTINGS non_replicated_deduplication_window = 100";

fn samples(range: std::ops::Range<u64>) -> Vec<Sample> {
    range
        .map(|id| Sample {
            id,
            uid: Uuid::from_u128(u128::from(id) * 0x9E37_79B9_7F4A_7C15),
            at: Utc
                .timestamp_millis_opt(1_700_000_000_000 + id as i64 * 37)
                .unwrap(),
            name: format!("name-{id}-{}", "x".repeat((id % 17) as usize)),
            kind: ["page_view", "click", "purchase"][(id % 3) as usize].to_string(),
            price_cents: (id % 3 == 2).then_some(id as i64 * 13 % 100_000),
            quantity: (id % 3 == 2).then_some((id % 7 + 1) as u16),
        })
        .collect()
}

async fn insert(client: &Client, rows: &[Sample]) -> Result<(), Error> {
    let mut insert = client.insert::<Sample>("samples").await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await
}

async fn read_all(client: &Client) -> Vec<Sample> {
    client
        .query("SELECT ?fields FROM samples ORDER BY id")
        .fetch_all::<Sample>()
        .await
        .expect("select samples")
}

async fn count(client: &Client) -> u64 {
    client
        .query("SELECT count() FROM samples")
        .fetch_one::<u64>()
        .await
        .expect("count")
}

#[tokio::test]
async fn inserts_100k_rows_with_and_without_lz4_and_reads_them_back() {
    for compression in [clickhouse::Compression::Lz4, clickhouse::Compression::None] {
        let (_, client) = temp_database(&clickhouse(), "it_rows").await;
        let client = client.with_compression(compression);
        client
            .query(SAMPLE_TABLE)
            .execute()
            .await
            .expect("create table");
        let rows = samples(0..100_000);
        insert(&client, &rows).await.expect("insert 100k rows");
        assert_eq!(read_all(&client).await, rows, "compression {compression:?}");
    }
}

#[tokio::test]
async fn same_deduplication_token_twice_keeps_one_copy() {
    let (_, client) = temp_database(&clickhouse(), "it_dedup").await;
    client
        .query(SAMPLE_TABLE)
        .execute()
        .await
        .expect("create table");
    let rows = samples(0..1_000);
    let first = client
        .clone()
        .with_setting("insert_deduplication_token", "events:0:0-999");
    insert(&first, &rows).await.expect("first insert");
    insert(&first, &rows).await.expect("replayed insert");
    assert_eq!(
        count(&client).await,
        1_000,
        "a replay with the same token adds nothing"
    );

    let other = client
        .clone()
        .with_setting("insert_deduplication_token", "events:0:1000-1999");
    insert(&other, &rows)
        .await
        .expect("insert with another token");
    assert_eq!(
        count(&client).await,
        2_000,
        "another token is another insert"
    );
}

#[tokio::test]
async fn errors_carry_the_clickhouse_code() {
    let (_, client) = temp_database(&clickhouse(), "it_errors").await;
    let error = client
        .query("SELECT * FROM no_such_table")
        .fetch_all::<u64>()
        .await
        .expect_err("unknown table");
    let Error::BadResponse(message) = &error else {
        panic!("expected a ClickHouse error, got {error:?}");
    };
    assert!(message.starts_with("Code: 60."), "{message}");
    assert!(message.contains("UNKNOWN_TABLE"), "{message}");

    let error = client
        .query("SELEC 1")
        .execute()
        .await
        .expect_err("syntax error");
    assert!(error.to_string().contains("Code: 62."), "{error}");

    client
        .query(SAMPLE_TABLE)
        .execute()
        .await
        .expect("create table");
    let error = client
        .query("INSERT INTO samples (id) FORMAT CSV\nnot-a-number\n")
        .execute()
        .await
        .expect_err("bad data");
    let message = error.to_string();
    assert!(
        ["Code: 117.", "Code: 27.", "Code: 6."]
            .iter()
            .any(|code| message.contains(code)),
        "a data error: {message}"
    );
}

#[tokio::test]
async fn rows_survive_an_endpoint_restart() {
    let dir = TempDir::new("chdb_restart");
    let mut endpoint = Endpoint::start(dir.path()).await;
    let (_, client) = temp_database(&endpoint.client(), "it_restart").await;
    client
        .query(SAMPLE_TABLE)
        .execute()
        .await
        .expect("create table");
    let rows = samples(0..10_000);
    insert(&client, &rows).await.expect("insert");

    endpoint.kill();
    endpoint.restart().await;
    assert_eq!(read_all(&client).await, rows);
}

#[test]
fn clickhouse_connect_inserts_and_selects() {
    let script = repo_root().join("testkit/tests/it/clickhouse_connect_check.py");
    let output = Command::new(stack_python())
        .arg(script)
        .arg(clickhouse_url())
        .output()
        .expect("run clickhouse-connect check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("clickhouse-connect: ok"), "{stdout}");
}

#[tokio::test]
async fn a_violated_constraint_fails_the_insert_and_stores_nothing() {
    let (_, client) = temp_database(&clickhouse(), "it_constraint").await;
    client
        .query(SAMPLE_TABLE)
        .execute()
        .await
        .expect("create table");
    client
        .query("ALTER TABLE samples ADD CONSTRAINT small_ids CHECK id < 1000")
        .execute()
        .await
        .expect("add constraint");
    let error = insert(&client, &samples(995..1_005))
        .await
        .expect_err("rows with id >= 1000 violate the constraint");
    assert!(error.to_string().contains("Code: 469."), "{error}");
    assert_eq!(count(&client).await, 0, "a failed insert stores no row");
    insert(&client, &samples(0..10)).await.expect("valid rows");
    assert_eq!(count(&client).await, 10);
}
