//! The ClickHouse Grafana plugin's SQL macros, expanded the way the plugin expands them, so the
//! panels' SQL can run outside Grafana (clickstream-top, the tests).
//!
//! Source: grafana-clickhouse-datasource v4, `pkg/macros/macros.go` (backend) and
//! `applyConditionalAll` in `src/data/CHDatasource.ts` (frontend). The expansions:
//!
//! | macro                     | expands to                                                          |
//! |---------------------------|---------------------------------------------------------------------|
//! | `$__fromTime`             | `toDateTime(<from, unix seconds>)`                                  |
//! | `$__toTime`               | `toDateTime(<to, unix seconds>)`                                    |
//! | `$__fromTime_ms`          | `fromUnixTimestamp64Milli(<from, unix ms>)`                         |
//! | `$__toTime_ms`            | `fromUnixTimestamp64Milli(<to, unix ms>)`                           |
//! | `$__timeFilter(c)`        | `c >= toDateTime(<from s>) AND c <= toDateTime(<to s>)`             |
//! | `$__timeFilter_ms(c)`     | `c >= fromUnixTimestamp64Milli(<from>) AND c <= ...(<to>)`          |
//! | `$__timeInterval(c)`      | `toStartOfInterval(toDateTime(c), INTERVAL <interval s> second)`    |
//! | `$__timeInterval_ms(c)`   | `toStartOfInterval(toDateTime64(c, 3), INTERVAL <ms> millisecond)`  |
//! | `$__interval_s`           | `<interval s>`                                                      |
//! | `$__conditionalAll(c, $v)`| `c` when variable `v` has a selection, `1=1` when it is All or empty |
//!
//! Seconds are truncated (Go's `time.Unix()`), the interval is at least 1 s (1 ms for `_ms`), and
//! both ends of `$__timeFilter` are inclusive. Assumption: Grafana's own variables (`$__interval`,
//! `$var`) are not used in our ClickHouse panels, so only `$__conditionalAll`'s are resolved.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// What Grafana passes to a query: the dashboard's time range and the panel's interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryWindow {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Grafana's `$__interval` for the panel (range / max data points, rounded).
    pub interval: Duration,
}

impl QueryWindow {
    /// The last `length` up to `to`, with Grafana's interval for about `points` data points.
    pub fn last(length: Duration, to: DateTime<Utc>, points: u32) -> QueryWindow {
        let from = to - chrono::Duration::from_std(length).unwrap_or(chrono::Duration::zero());
        QueryWindow {
            from,
            to,
            interval: length / points.max(1),
        }
    }
}

/// Template variables of a dashboard: name → selected values (empty or `$__all` = All).
pub type Variables = BTreeMap<String, Vec<String>>;

/// Why a panel's SQL cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacroError {
    #[error("unknown macro $__{0}")]
    Unknown(String),
    #[error("macro $__{name} expects {expected} argument(s), got {got}")]
    Arguments {
        name: String,
        expected: usize,
        got: usize,
    },
    #[error("macro $__{0} has no closing parenthesis")]
    Unclosed(String),
}

/// The SQL Grafana would send for `sql` over `window`.
pub fn expand(
    sql: &str,
    window: &QueryWindow,
    variables: &Variables,
) -> Result<String, MacroError> {
    let sql = conditional_all(sql, variables)?;
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql.as_str();
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let mut tail = &after[name_len..];
        let args = if tail.starts_with('(') {
            let (args, consumed) = split_args(tail, name)?;
            tail = &tail[consumed..];
            args
        } else {
            Vec::new()
        };
        out.push_str(&expand_one(name, &args, window)?);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

fn expand_one(name: &str, args: &[String], window: &QueryWindow) -> Result<String, MacroError> {
    let seconds = |t: DateTime<Utc>| format!("toDateTime({})", t.timestamp());
    let millis = |t: DateTime<Utc>| format!("fromUnixTimestamp64Milli({})", t.timestamp_millis());
    let column = || match args {
        [column] => Ok(column.as_str()),
        _ => Err(MacroError::Arguments {
            name: name.to_owned(),
            expected: 1,
            got: args.len(),
        }),
    };
    let interval_s = window.interval.as_secs().max(1);
    let interval_ms = window.interval.as_millis().max(1);
    Ok(match name {
        "fromTime" => seconds(window.from),
        "toTime" => seconds(window.to),
        "fromTime_ms" => millis(window.from),
        "toTime_ms" => millis(window.to),
        "interval_s" => interval_s.to_string(),
        "timeFilter" => {
            let c = column()?;
            format!(
                "{c} >= {} AND {c} <= {}",
                seconds(window.from),
                seconds(window.to)
            )
        }
        "timeFilter_ms" => {
            let c = column()?;
            format!(
                "{c} >= {} AND {c} <= {}",
                millis(window.from),
                millis(window.to)
            )
        }
        "timeInterval" => format!(
            "toStartOfInterval(toDateTime({}), INTERVAL {interval_s} second)",
            column()?
        ),
        "timeInterval_ms" => format!(
            "toStartOfInterval(toDateTime64({}, 3), INTERVAL {interval_ms} millisecond)",
            column()?
        ),
        other => return Err(MacroError::Unknown(other.to_owned())),
    })
}

/// `$__conditionalAll(condition, $var)`, resolved first as the plugin's frontend does.
fn conditional_all(sql: &str, variables: &Variables) -> Result<String, MacroError> {
    const MACRO: &str = "$__conditionalAll";
    let mut sql = sql.to_owned();
    while let Some(at) = sql.rfind(MACRO) {
        let (args, consumed) = split_args(&sql[at + MACRO.len()..], "conditionalAll")?;
        let [condition, variable] = args.as_slice() else {
            return Err(MacroError::Arguments {
                name: "conditionalAll".into(),
                expected: 2,
                got: args.len(),
            });
        };
        let name = variable
            .trim()
            .trim_start_matches('$')
            .trim_start_matches('{')
            .trim_end_matches('}');
        let all = variables
            .get(name)
            .is_none_or(|values| values.is_empty() || values.iter().any(|v| v == "$__all"));
        let phrase = if all { "1=1" } else { condition.as_str() };
        sql.replace_range(at..at + MACRO.len() + consumed, phrase);
    }
    Ok(sql)
}

/// Splits `(a, f(b, c))…` into its top-level arguments; returns them and the bytes consumed.
fn split_args(text: &str, name: &str) -> Result<(Vec<String>, usize), MacroError> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut args = Vec::new();
    let mut current = String::new();
    for (i, ch) in text.char_indices() {
        if let Some(q) = quote {
            current.push(ch);
            if ch == q {
                quote = None;
            }
            continue;
        }
        match ch {
            '(' if depth == 0 => depth = 1,
            '(' => {
                depth += 1;
                current.push(ch);
            }
            ')' if depth == 1 => {
                args.push(current.trim().to_owned());
                let args = if args.len() == 1 && args[0].is_empty() {
                    Vec::new()
                } else {
                    args
                };
                return Ok((args, i + 1));
            }
            ')' => {
                depth -= 1;
                current.push(ch);
            }
            ',' if depth == 1 => args.push(std::mem::take(&mut current).trim().to_owned()),
            '\'' | '"' | '`' => {
                quote = Some(ch);
                current.push(ch);
            }
            _ => current.push(ch),
        }
    }
    Err(MacroError::Unclosed(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn window() -> QueryWindow {
        QueryWindow {
            from: Utc.timestamp_millis_opt(1_790_000_000_250).unwrap(),
            to: Utc.timestamp_millis_opt(1_790_000_900_750).unwrap(),
            interval: Duration::from_millis(2_500),
        }
    }

    #[test]
    fn time_macros_expand_like_the_plugin() {
        let sql = "SELECT $__timeInterval(event_time) AS t, count() / $__interval_s \
                   FROM e WHERE $__timeFilter(event_time) AND x > $__fromTime_ms AND y < $__toTime";
        assert_eq!(
            expand(sql, &window(), &Variables::new()).unwrap(),
            "SELECT toStartOfInterval(toDateTime(event_time), INTERVAL 2 second) AS t, count() / 2 \
             FROM e WHERE event_time >= toDateTime(1790000000) AND event_time <= toDateTime(1790000900) \
             AND x > fromUnixTimestamp64Milli(1790000000250) AND y < toDateTime(1790000900)"
        );
    }

    #[test]
    fn ms_variants_and_nested_arguments() {
        let sql = "$__timeFilter_ms(toDateTime64(a, 3)) $__timeInterval_ms(b) $__toTime_ms";
        assert_eq!(
            expand(sql, &window(), &Variables::new()).unwrap(),
            "toDateTime64(a, 3) >= fromUnixTimestamp64Milli(1790000000250) AND toDateTime64(a, 3) \
             <= fromUnixTimestamp64Milli(1790000900750) \
             toStartOfInterval(toDateTime64(b, 3), INTERVAL 2500 millisecond) \
             fromUnixTimestamp64Milli(1790000900750)"
        );
    }

    #[test]
    fn interval_is_at_least_one_second() {
        let mut w = window();
        w.interval = Duration::from_millis(200);
        assert_eq!(expand("$__interval_s", &w, &Variables::new()).unwrap(), "1");
    }

    #[test]
    fn conditional_all_keeps_the_condition_only_for_a_selection() {
        let sql = "WHERE $__conditionalAll(device IN (${device:singlequote}), $device) AND 1";
        let mut vars = Variables::new();
        assert_eq!(expand(sql, &window(), &vars).unwrap(), "WHERE 1=1 AND 1");
        vars.insert("device".into(), vec!["$__all".into()]);
        assert_eq!(expand(sql, &window(), &vars).unwrap(), "WHERE 1=1 AND 1");
        vars.insert("device".into(), vec!["mobile".into()]);
        assert_eq!(
            expand(sql, &window(), &vars).unwrap(),
            "WHERE device IN (${device:singlequote}) AND 1"
        );
    }

    #[test]
    fn mistakes_are_errors_not_silent_sql() {
        let vars = Variables::new();
        assert_eq!(
            expand("$__timeFiltr(a)", &window(), &vars),
            Err(MacroError::Unknown("timeFiltr".into()))
        );
        assert!(matches!(
            expand("$__timeFilter(a, b)", &window(), &vars),
            Err(MacroError::Arguments { got: 2, .. })
        ));
        assert!(matches!(
            expand("$__timeFilter(a", &window(), &vars),
            Err(MacroError::Unclosed(_))
        ));
    }

    #[test]
    fn last_window_ends_at_to() {
        let to = Utc.timestamp_opt(1_790_000_000, 0).unwrap();
        let w = QueryWindow::last(Duration::from_secs(900), to, 300);
        assert_eq!(w.from, Utc.timestamp_opt(1_789_999_100, 0).unwrap());
        assert_eq!(w.interval, Duration::from_secs(3));
    }
}
