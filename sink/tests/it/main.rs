//! The sink's integration tests, one binary: each runs the real sink against the broker and
//! the ClickHouse engine in `KAFKA_BROKERS` / `CLICKHOUSE_URL` (`scripts/test` starts a private
//! stack), in a database and topics of its own.

mod common;
mod crash;
mod ops;
mod pipeline;
mod resilience;
mod row_roundtrip;
mod security;
