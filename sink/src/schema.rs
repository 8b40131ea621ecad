//! The events table as it is *now*, and how each row is encoded for it.
//!
//! The sink does not trust a structure cached at start: it reads the table's columns from
//! `system.columns`, checks that they can still hold the event contract, and encodes every
//! row in `RowBinaryWithNamesAndTypes` with the table's own type names in the header. So:
//! - a benign ALTER (`UInt32` → `UInt64`, `String` → `LowCardinality(String)`, a wider
//!   `Decimal`, `Nullable` added) is followed: ClickHouse refuses the stale header
//!   (`Code: 117`), the writer reloads the structure and re-encodes; nothing is dead-lettered;
//! - columns added with a DEFAULT are simply not sent, so ClickHouse fills them;
//! - a column the contract needs that was dropped or retyped so it cannot hold every valid
//!   event (narrower integers, lost `Nullable`, fewer decimals) stops the sink with an error
//!   naming the column and what to do.
//!
//! `kafka_timestamp` (the message's timestamp) is written when the table has it, as an
//! ordinary or DEFAULT column: a table made before the column existed is still written, with
//! the columns it has. `clickhouse/schema.sql` adds the column with an idempotent ALTER; a sink
//! that is running then keeps its structure (inserting fewer columns is not refused) and writes
//! the column from its next start or structure reload: rows in between read 1970 there, which
//! the latency queries leave out.

use std::fmt::Write as _;

use clickstream_event::{MAX_DURATION_MS, MAX_PRICE_CENTS, MAX_QUANTITY};

use crate::row::RowRef;

/// One column of the table as `system.columns` reports it.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    /// '', DEFAULT, MATERIALIZED, ALIAS or EPHEMERAL.
    pub default_kind: String,
}

/// What a contract column holds, with the range of values a valid event can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Uuid,
    /// Milliseconds since the epoch.
    TimeMillis,
    Text,
    OptionalText,
    /// An integer in `min..=max`; `optional` when the event may omit it.
    Int {
        min: i128,
        max: i128,
        optional: bool,
    },
    /// Cents in `0..=max`, optional.
    Cents {
        max: i128,
    },
}

/// The columns the sink writes, in the order of [`EventRow`].
const CONTRACT: &[(&str, Source)] = &[
    ("event_id", Source::Uuid),
    ("event_time", Source::TimeMillis),
    ("user_id", Source::Text),
    ("session_id", Source::Uuid),
    ("event_type", Source::Text),
    ("page_url", Source::Text),
    ("page_category", Source::Text),
    ("referrer", Source::Text),
    ("device_type", Source::Text),
    ("browser", Source::Text),
    ("country", Source::Text),
    (
        "duration_ms",
        Source::Int {
            min: 0,
            max: MAX_DURATION_MS as i128,
            optional: false,
        },
    ),
    ("product_id", Source::OptionalText),
    (
        "price",
        Source::Cents {
            max: MAX_PRICE_CENTS as i128,
        },
    ),
    (
        "quantity",
        Source::Int {
            min: 1,
            max: MAX_QUANTITY as i128,
            optional: true,
        },
    ),
    ("kafka_topic", Source::Text),
    (
        "kafka_partition",
        Source::Int {
            min: 0,
            max: i32::MAX as i128,
            optional: false,
        },
    ),
    (
        "kafka_offset",
        Source::Int {
            min: 0,
            max: i64::MAX as i128,
            optional: false,
        },
    ),
];

/// Written when the table has it (tables made before it existed are written without it).
const KAFKA_TIMESTAMP: &str = "kafka_timestamp";

/// How one value is written for the table's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Uuid,
    /// DateTime64 ticks: milliseconds times this factor.
    Time64 {
        factor: i64,
    },
    Text,
    /// Little-endian integer of `bytes` bytes.
    Int {
        bytes: u8,
    },
    /// Decimal: cents times `factor`, `bytes` wide.
    Decimal {
        factor: i128,
        bytes: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    nullable: bool,
    encoding: Encoding,
}

/// Why the table cannot hold the event contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column `{column}` of {table}: {problem}")]
pub struct Incompatible {
    pub table: String,
    pub column: String,
    pub problem: String,
}

/// The insert plan for the table's current structure.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// `INSERT INTO db.table (cols) FORMAT RowBinaryWithNamesAndTypes`.
    pub statement: String,
    /// The format header: column count, names, the table's type names.
    pub header: bytes::Bytes,
    plans: Vec<Plan>,
    /// How `kafka_timestamp` is written; `None` when the table has no such column.
    kafka_timestamp: Option<Plan>,
    /// The structure it was made for (to tell whether a reload changed anything).
    pub columns: Vec<Column>,
}

impl Layout {
    /// Plans the insert into `database.table` with these `columns`, or says which contract
    /// column the table can no longer hold.
    pub fn new(database: &str, table: &str, columns: &[Column]) -> Result<Layout, Incompatible> {
        let qualified = format!("{database}.{table}");
        let incompatible = |column: &str, problem: String| Incompatible {
            table: qualified.clone(),
            column: column.to_owned(),
            problem,
        };
        let mut plans = Vec::with_capacity(CONTRACT.len());
        let optional = columns.iter().find(|c| c.name == KAFKA_TIMESTAMP);
        let kafka_timestamp = match optional {
            // MATERIALIZED or ALIAS: the table computes it; nothing to send.
            Some(column) if matches!(column.default_kind.as_str(), "" | "DEFAULT") => {
                Some(plan(Source::TimeMillis, &column.type_name).map_err(|why| {
                    incompatible(
                        KAFKA_TIMESTAMP,
                        format!(
                            "type {} cannot hold the message timestamp ({why}); make it \
                             DateTime64(3, 'UTC') as in clickhouse/schema.sql, or drop it",
                            column.type_name
                        ),
                    )
                })?)
            }
            _ => None,
        };
        let mut header = Vec::new();
        put_uleb128(
            &mut header,
            (CONTRACT.len() + usize::from(kafka_timestamp.is_some())) as u64,
        );
        for (name, _) in CONTRACT {
            put_string(&mut header, name.as_bytes());
        }
        if kafka_timestamp.is_some() {
            put_string(&mut header, KAFKA_TIMESTAMP.as_bytes());
        }
        let mut names = String::new();
        for (name, source) in CONTRACT {
            let Some(column) = columns.iter().find(|c| c.name == *name) else {
                return Err(incompatible(
                    name,
                    format!(
                        "missing: the sink writes it for every event. Add it back (see \
                         clickhouse/schema.sql: ALTER TABLE {qualified} ADD COLUMN {name} ...) \
                         or point the sink at a table with the event contract"
                    ),
                ));
            };
            if !matches!(column.default_kind.as_str(), "" | "DEFAULT") {
                return Err(incompatible(
                    name,
                    format!(
                        "is {} and cannot be inserted; make it an ordinary column",
                        column.default_kind
                    ),
                ));
            }
            let plan = plan(*source, &column.type_name).map_err(|why| {
                incompatible(
                    name,
                    format!(
                        "type {} cannot hold every valid event ({why}); change it back \
                         (clickhouse/schema.sql) or to a wider type",
                        column.type_name
                    ),
                )
            })?;
            plans.push(plan);
            put_string(&mut header, column.type_name.as_bytes());
            if !names.is_empty() {
                names.push_str(", ");
            }
            let _ = write!(names, "`{name}`");
        }
        if let Some(column) = optional.filter(|_| kafka_timestamp.is_some()) {
            put_string(&mut header, column.type_name.as_bytes());
            let _ = write!(names, ", `{KAFKA_TIMESTAMP}`");
        }
        Ok(Layout {
            statement: format!(
                "INSERT INTO {database}.{table} ({names}) FORMAT RowBinaryWithNamesAndTypes"
            ),
            header: header.into(),
            plans,
            kafka_timestamp,
            columns: columns.to_vec(),
        })
    }

    /// Appends `row` in the table's types.
    pub fn encode(&self, row: &RowRef<'_>, out: &mut Vec<u8>) {
        let mut plans = self.plans.iter();
        let mut next = || *plans.next().expect("one plan per contract column");
        put_uuid(out, next(), Some(row.event_id));
        let time = next();
        put_value(out, time, Some(i128::from(row.event_time_ms)));
        put_text(out, next(), Some(row.user_id));
        put_uuid(out, next(), Some(row.session_id));
        for text in [
            row.event_type,
            row.page_url,
            row.page_category,
            row.referrer,
            row.device_type,
            row.browser,
            row.country,
        ] {
            put_text(out, next(), Some(text));
        }
        put_value(out, next(), Some(i128::from(row.duration_ms)));
        put_text(out, next(), row.product_id);
        put_value(out, next(), row.price.map(i128::from));
        put_value(out, next(), row.quantity.map(i128::from));
        put_text(out, next(), Some(row.kafka_topic));
        put_value(out, next(), Some(i128::from(row.kafka_partition)));
        put_value(out, next(), Some(i128::from(row.kafka_offset)));
        if let Some(plan) = self.kafka_timestamp {
            let millis = row
                .kafka_timestamp_ms
                .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            put_value(out, plan, Some(i128::from(millis)));
        }
    }

    /// Whether rows carry `kafka_timestamp` (the table has the column).
    pub fn writes_kafka_timestamp(&self) -> bool {
        self.kafka_timestamp.is_some()
    }
}

impl Layout {
    /// The event id and event time (ms) of one encoded row: its first two columns, read back
    /// so that rows need no copy of them beside their bytes.
    pub fn id_and_time(&self, row: &[u8]) -> (uuid::Uuid, i64) {
        let mut at = usize::from(self.plans[0].nullable);
        let word = |at: usize| u64::from_le_bytes(row[at..at + 8].try_into().expect("8 bytes"));
        let id = uuid::Uuid::from_u64_pair(word(at), word(at + 8));
        at += 16 + usize::from(self.plans[1].nullable);
        let ticks = word(at) as i64;
        let millis = match self.plans[1].encoding {
            Encoding::Time64 { factor } => ticks.div_euclid(factor),
            _ => unreachable!("the second contract column is the event time"),
        };
        (id, millis)
    }
}

/// How `source` is written into a column of type `type_name`, or why it cannot be.
fn plan(source: Source, type_name: &str) -> Result<Plan, String> {
    let mut ty = type_name.trim();
    // LowCardinality changes storage, not the RowBinary encoding.
    if let Some(inner) = unwrap(ty, "LowCardinality") {
        ty = inner;
    }
    let nullable = match unwrap(ty, "Nullable") {
        Some(inner) => {
            ty = inner;
            true
        }
        None => false,
    };
    let optional = matches!(
        source,
        Source::OptionalText | Source::Cents { .. } | Source::Int { optional: true, .. }
    );
    if optional && !nullable {
        return Err("not Nullable, but the event may omit this field".into());
    }
    let encoding = match source {
        Source::Uuid if ty == "UUID" => Encoding::Uuid,
        Source::Text | Source::OptionalText if ty == "String" => Encoding::Text,
        Source::TimeMillis => {
            let precision = unwrap(ty, "DateTime64")
                .and_then(|args| args.split(',').next())
                .and_then(|p| p.trim().parse::<u32>().ok())
                .ok_or("expected DateTime64 with millisecond precision or finer")?;
            if !(3..=9).contains(&precision) {
                return Err(format!("precision {precision} drops milliseconds"));
            }
            Encoding::Time64 {
                factor: 10_i64.pow(precision - 3),
            }
        }
        Source::Int { min, max, .. } => {
            let (lo, hi, bytes) = int_range(ty).ok_or("expected an integer type")?;
            if min < lo || max > hi {
                return Err(format!("valid values go up to {max}"));
            }
            Encoding::Int { bytes }
        }
        Source::Cents { max } => {
            let (precision, scale) = decimal(ty).ok_or("expected a Decimal")?;
            if scale < 2 {
                return Err("prices have two decimals".into());
            }
            let factor = 10_i128.pow(scale - 2);
            if max * factor >= 10_i128.pow(precision) {
                return Err(format!("prices go up to {}.00", max / 100));
            }
            let bytes = match precision {
                1..=9 => 4,
                10..=18 => 8,
                19..=38 => 16,
                _ => return Err("Decimal256 is not supported".into()),
            };
            Encoding::Decimal { factor, bytes }
        }
        _ => return Err("a different kind of value".into()),
    };
    Ok(Plan { nullable, encoding })
}

/// `Name(inner)` → `inner`.
fn unwrap<'a>(ty: &'a str, name: &str) -> Option<&'a str> {
    ty.strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')
        .map(str::trim)
}

fn int_range(ty: &str) -> Option<(i128, i128, u8)> {
    Some(match ty {
        "UInt8" => (0, u8::MAX.into(), 1),
        "UInt16" => (0, u16::MAX.into(), 2),
        "UInt32" => (0, u32::MAX.into(), 4),
        "UInt64" => (0, u64::MAX.into(), 8),
        "Int8" => (i8::MIN.into(), i8::MAX.into(), 1),
        "Int16" => (i16::MIN.into(), i16::MAX.into(), 2),
        "Int32" => (i32::MIN.into(), i32::MAX.into(), 4),
        "Int64" => (i64::MIN.into(), i64::MAX.into(), 8),
        _ => return None,
    })
}

/// `Decimal(P, S)` (how system.columns spells every Decimal) → (P, S).
fn decimal(ty: &str) -> Option<(u32, u32)> {
    let args = unwrap(ty, "Decimal")?;
    let (p, s) = args.split_once(',')?;
    Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
}

fn put_uleb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_uleb128(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The Nullable marker; false when the value is NULL (nothing more is written).
fn put_present(out: &mut Vec<u8>, plan: Plan, present: bool) -> bool {
    if plan.nullable {
        out.push(u8::from(!present));
    }
    present
}

fn put_uuid(out: &mut Vec<u8>, plan: Plan, value: Option<uuid::Uuid>) {
    if put_present(out, plan, value.is_some())
        && let Some(uuid) = value
    {
        // ClickHouse stores a UUID as two little-endian u64 halves, high half first.
        let (high, low) = uuid.as_u64_pair();
        out.extend_from_slice(&high.to_le_bytes());
        out.extend_from_slice(&low.to_le_bytes());
    }
}

fn put_text(out: &mut Vec<u8>, plan: Plan, value: Option<&str>) {
    if put_present(out, plan, value.is_some())
        && let Some(text) = value
    {
        put_string(out, text.as_bytes());
    }
}

fn put_value(out: &mut Vec<u8>, plan: Plan, value: Option<i128>) {
    if !put_present(out, plan, value.is_some()) {
        return;
    }
    let Some(value) = value else { return };
    let (value, bytes) = match plan.encoding {
        Encoding::Time64 { factor } => (value * i128::from(factor), 8),
        Encoding::Int { bytes } => (value, bytes),
        Encoding::Decimal { factor, bytes } => (value * factor, bytes),
        Encoding::Uuid | Encoding::Text => unreachable!("plans for numbers only"),
    };
    out.extend_from_slice(&value.to_le_bytes()[..usize::from(bytes)]);
}

/// The columns of `clickhouse/schema.sql`'s events table, with `changes` (a type, or "" to
/// drop the column): for tests here and in the stages that encode.
#[cfg(test)]
pub(crate) fn test_columns(changes: &[(&str, &str)]) -> Vec<Column> {
    let base = [
        ("event_id", "UUID"),
        ("event_time", "DateTime64(3, 'UTC')"),
        ("user_id", "String"),
        ("session_id", "UUID"),
        ("event_type", "LowCardinality(String)"),
        ("page_url", "LowCardinality(String)"),
        ("page_category", "LowCardinality(String)"),
        ("referrer", "LowCardinality(String)"),
        ("device_type", "LowCardinality(String)"),
        ("browser", "LowCardinality(String)"),
        ("country", "LowCardinality(String)"),
        ("duration_ms", "UInt32"),
        ("product_id", "LowCardinality(Nullable(String))"),
        ("price", "Nullable(Decimal(12, 2))"),
        ("quantity", "Nullable(UInt16)"),
        ("kafka_topic", "LowCardinality(String)"),
        ("kafka_partition", "Int32"),
        ("kafka_offset", "Int64"),
        ("kafka_timestamp", "DateTime64(3, 'UTC')"),
        ("inserted_at", "DateTime64(3, 'UTC')"),
    ];
    base.iter()
        .filter(|(name, _)| !changes.iter().any(|(n, t)| n == name && t.is_empty()))
        .map(|(name, ty)| Column {
            name: (*name).to_owned(),
            type_name: changes
                .iter()
                .find(|(n, _)| n == name)
                .map_or(*ty, |(_, t)| *t)
                .to_owned(),
            default_kind: if *name == "inserted_at" {
                "DEFAULT".into()
            } else {
                String::new()
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::EventRow;

    fn columns(changes: &[(&str, &str)]) -> Vec<Column> {
        test_columns(changes)
    }

    #[test]
    fn the_schema_as_shipped_is_planned_without_inserted_at() {
        let layout = Layout::new("db", "events", &columns(&[])).expect("compatible");
        assert!(
            layout
                .statement
                .contains("`kafka_offset`, `kafka_timestamp`) FORMAT")
        );
        assert!(!layout.statement.contains("inserted_at"));
        assert!(layout.writes_kafka_timestamp());
    }

    #[test]
    fn the_kafka_timestamp_is_written_only_where_the_table_has_it() {
        let row = crate::rows::tests::row(42, 1_700_000_000_000);
        let with = Layout::new("db", "events", &columns(&[])).unwrap();
        let without = Layout::new("db", "events", &columns(&[("kafka_timestamp", "")])).unwrap();
        assert!(!without.writes_kafka_timestamp());
        assert!(without.statement.contains("`kafka_offset`) FORMAT"));
        // 19 columns in the header against 18: count, names and types.
        assert_eq!(with.header[0], 19);
        assert_eq!(without.header[0], 18);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        with.encode(&row, &mut a);
        without.encode(&row, &mut b);
        assert_eq!(a.len(), b.len() + 8);
        assert_eq!(&a[..b.len()], &b[..]);
        assert_eq!(&a[b.len()..], &1_700_000_000_005_i64.to_le_bytes());
        // A message without a timestamp: the time it is encoded (the sink reads it then).
        let before = chrono::Utc::now().timestamp_millis();
        let mut c = Vec::new();
        with.encode(&row.with_kafka_timestamp(None), &mut c);
        let written = i64::from_le_bytes(c[c.len() - 8..].try_into().unwrap());
        assert!(
            (before..=chrono::Utc::now().timestamp_millis()).contains(&written),
            "{written}"
        );
        // Microseconds, Nullable, DEFAULT: written; MATERIALIZED: the table computes it.
        let micros = Layout::new(
            "db",
            "events",
            &columns(&[("kafka_timestamp", "Nullable(DateTime64(6, 'UTC'))")]),
        )
        .unwrap();
        let mut m = Vec::new();
        micros.encode(&row, &mut m);
        assert_eq!(
            &m[m.len() - 9..],
            &[&[0_u8][..], &1_700_000_000_005_000_i64.to_le_bytes()].concat()[..]
        );
        let mut materialized = columns(&[]);
        for column in &mut materialized {
            if column.name == "kafka_timestamp" {
                column.default_kind = "MATERIALIZED".into();
            }
        }
        let computed = Layout::new("db", "events", &materialized).unwrap();
        assert!(!computed.writes_kafka_timestamp());
        let error = Layout::new("db", "events", &columns(&[("kafka_timestamp", "DateTime")]))
            .expect_err("seconds drop the milliseconds");
        assert_eq!(error.column, "kafka_timestamp");
    }

    #[test]
    fn benign_alters_are_followed() {
        for (column, ty) in [
            ("duration_ms", "UInt64"),
            ("duration_ms", "Int32"),
            ("user_id", "LowCardinality(String)"),
            ("event_type", "String"),
            ("price", "Nullable(Decimal(18, 4))"),
            ("quantity", "Nullable(Int64)"),
            ("kafka_offset", "UInt64"),
            ("event_time", "DateTime64(6, 'UTC')"),
            ("country", "Nullable(String)"),
        ] {
            assert!(
                Layout::new("db", "events", &columns(&[(column, ty)])).is_ok(),
                "{column} {ty}"
            );
        }
    }

    #[test]
    fn incompatible_tables_name_the_column() {
        for (column, ty) in [
            ("duration_ms", "UInt16"),
            ("duration_ms", ""),
            ("price", "Decimal(12, 2)"),
            ("price", "Nullable(Decimal(12, 1))"),
            ("price", "Nullable(Decimal(7, 2))"),
            ("quantity", "Nullable(UInt8)"),
            ("event_time", "DateTime('UTC')"),
            ("event_id", "String"),
            ("kafka_offset", "Int32"),
        ] {
            let error = Layout::new("db", "events", &columns(&[(column, ty)]))
                .expect_err(&format!("{column} {ty}"));
            assert_eq!(error.column, column);
            assert!(error.to_string().contains("db.events"), "{error}");
        }
    }

    #[test]
    fn rows_are_encoded_in_the_tables_types() {
        let row = EventRow {
            event_id: uuid::Uuid::from_u64_pair(1, 2),
            event_time: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            user_id: "u".into(),
            session_id: uuid::Uuid::from_u64_pair(3, 4),
            event_type: "purchase".into(),
            page_url: "/p".into(),
            page_category: "c".into(),
            referrer: "r".into(),
            device_type: "d".into(),
            browser: "b".into(),
            country: "DE".into(),
            duration_ms: 7,
            product_id: None,
            price: Some(1_999),
            quantity: Some(2),
            kafka_topic: "t".into(),
            kafka_partition: 1,
            kafka_offset: 42,
            kafka_timestamp: chrono::DateTime::from_timestamp_millis(1_700_000_000_456).unwrap(),
        };
        let narrow = Layout::new("db", "events", &columns(&[])).unwrap();
        let wide = Layout::new(
            "db",
            "events",
            &columns(&[
                ("duration_ms", "UInt64"),
                ("price", "Nullable(Decimal(18, 4))"),
            ]),
        )
        .unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        narrow.encode(&row.as_row_ref(), &mut a);
        wide.encode(&row.as_row_ref(), &mut b);
        let expected = (row.event_id, 1_700_000_000_123);
        assert_eq!(narrow.id_and_time(&a), expected);
        assert_eq!(wide.id_and_time(&b), expected);
        let micros = Layout::new(
            "db",
            "events",
            &columns(&[
                ("event_id", "Nullable(UUID)"),
                ("event_time", "Nullable(DateTime64(6, 'UTC'))"),
            ]),
        )
        .unwrap();
        let mut m = Vec::new();
        micros.encode(&row.as_row_ref(), &mut m);
        assert_eq!(micros.id_and_time(&m), expected);
        assert_eq!(
            b.len(),
            a.len() + 4,
            "duration 4 bytes wider, price as wide"
        );
        assert_eq!(&a[..8], &1_u64.to_le_bytes());
        assert_eq!(&a[8..16], &2_u64.to_le_bytes());
        assert_eq!(&a[16..24], &1_700_000_000_123_i64.to_le_bytes());
        // the price in cents ×100 for scale 4
        assert!(b.windows(8).any(|w| w == 199_900_i64.to_le_bytes()));
        // NULLs are one marker byte each: no price, no quantity.
        let mut c = Vec::new();
        narrow.encode(
            &EventRow {
                price: None,
                quantity: None,
                ..row
            }
            .as_row_ref(),
            &mut c,
        );
        assert_eq!(a.len() - c.len(), 8 + 2, "{} vs {}", a.len(), c.len());
    }
}
