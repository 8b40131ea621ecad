//! testkit's own integration tests: the ClickHouse-compatible endpoint and the broker.

mod clickhouse_endpoint;
mod kafka_smoke;
