//! A query result whose columns are not known at compile time: a panel's SQL is data (it comes
//! from the dashboards), so it is read as `JSONCompact` rather than into a typed row.

use serde::Deserialize;
use serde_json::Value;

use crate::Error;

/// Column names and ClickHouse types, and the rows as JSON values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Table {
    #[serde(rename = "meta")]
    pub columns: Vec<Column>,
    #[serde(rename = "data")]
    pub rows: Vec<Vec<Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

impl Table {
    /// Runs `sql` (macros already expanded); `label` names the query in errors.
    pub async fn fetch(
        client: &clickhouse::Client,
        label: &str,
        sql: &str,
    ) -> Result<Table, Error> {
        let bytes = client
            .query(sql)
            // numbers as JSON numbers, not strings
            .with_setting("output_format_json_quote_64bit_integers", "0")
            .with_setting("output_format_json_quote_decimals", "0")
            .fetch_bytes("JSONCompact")
            .map_err(|source| Error::Query {
                label: label.to_owned(),
                source,
            })?
            .collect()
            .await
            .map_err(|source| Error::Query {
                label: label.to_owned(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            label: label.to_owned(),
            source,
        })
    }

    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The value of column `name` in row `row` as a number (NULL, NaN and text that is not a
    /// number are `None`).
    pub fn number(&self, row: usize, name: &str) -> Option<f64> {
        let value = self.rows.get(row)?.get(self.column(name)?)?;
        match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The value of column `index` in row `row` as text.
    pub fn text(&self, row: usize, index: usize) -> String {
        match self.rows.get(row).and_then(|r| r.get(index)) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_compact() {
        let table: Table = serde_json::from_str(
            r#"{"meta":[{"name":"k","type":"String"},{"name":"n","type":"UInt64"},
                {"name":"d","type":"Decimal(38, 2)"}],
                "data":[["a",3,12.5],["b","4",null]],"rows":2,"statistics":{}}"#,
        )
        .unwrap();
        assert_eq!(table.column_names(), ["k", "n", "d"]);
        assert_eq!(table.number(0, "n"), Some(3.0));
        assert_eq!(table.number(1, "n"), Some(4.0));
        assert_eq!(table.number(0, "d"), Some(12.5));
        assert_eq!(table.number(1, "d"), None);
        assert_eq!(table.number(0, "missing"), None);
        assert_eq!(table.text(1, 0), "b");
    }
}
