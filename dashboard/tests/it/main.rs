//! Integration tests against the real ClickHouse engine (`CLICKHOUSE_URL`), one database per
//! test or one shared, read-only seeded database (see `seed`).

mod alerts;
mod behaviour;
mod grafana;
mod rollups;
mod schema;
mod seed;
mod top;
