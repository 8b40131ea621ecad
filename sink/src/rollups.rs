//! The rollups the events table feeds (its materialized views), and how to bring some of
//! their keys back to what the table holds: delete the rollup's rows of those keys, then
//! insert the view's own SELECT over the raw rows of those keys.
//!
//! Used by `replay` (a range re-read) and by the sink itself: ClickHouse does not roll back
//! an INSERT whose table part and first views were written before a later view failed, so
//! the views fed before the failing one hold rows the sink then writes again (as parts of
//! a split, or without the rejected row). Which column of a rollup is its key, and which
//! expression over a raw row gives it, is declared next to the view in
//! clickhouse/schema.sql (`-- rebuild clickstream.<rollup>: <key> = <expression>`).

use clickhouse::Client;
use clickhouse::error::Error as ChError;
use serde::Serialize;

/// The schema, with its rebuild declarations.
pub const SCHEMA_SQL: &str = include_str!("../../clickhouse/schema.sql");

/// How to recompute one rollup for some of its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rebuild {
    /// The rollup table (without database).
    pub table: String,
    /// Its key column(s) (e.g. `window_start`, `(kafka_topic, kafka_partition)`).
    pub key: String,
    /// The same key computed from a raw row (e.g. `toStartOfMinute(event_time)`).
    pub expression: String,
}

/// The rebuild declarations of a schema file: `-- rebuild clickstream.<table>: <key> = <expr>`.
pub fn rebuild_declarations(schema: &str) -> Vec<Rebuild> {
    schema
        .lines()
        .filter_map(|line| line.trim().strip_prefix("-- rebuild "))
        .filter_map(|rest| {
            let (table, decl) = rest.split_once(':')?;
            let (key, expression) = decl.split_once(" = ")?;
            let table = table.trim();
            let table = table.rsplit('.').next().unwrap_or(table);
            Some(Rebuild {
                table: table.to_owned(),
                key: key.trim().to_owned(),
                expression: expression.trim().to_owned(),
            })
        })
        .collect()
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct ViewRow {
    engine: String,
    database: String,
    name: String,
    create_table_query: String,
    as_select: String,
}

/// A materialized view fed by the events table, with what it takes to rebuild its table.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    /// The materialized view (`db.view` when it lives in another database than the table).
    pub view: String,
    /// `db.view`, as ClickHouse names a view that refused an insert.
    pub qualified_view: String,
    /// The table it writes (`db.table` when in another database than the events table);
    /// empty where not known (no `TO` table, or a view the user cannot see).
    pub target: String,
    /// Its declaration in schema.sql; none: it cannot be rebuilt, and `why_not` says why.
    pub rebuild: Option<Rebuild>,
    pub why_not: Option<NotRebuilt>,
    /// The view's SELECT.
    pub select: String,
}

/// Why a view's table cannot be rebuilt by the sink.
#[derive(Debug, Clone, PartialEq)]
pub enum NotRebuilt {
    /// A table of the sink's database without a `-- rebuild` line in schema.sql.
    Undeclared,
    /// The view or its table lives in this other database.
    OtherDatabase(String),
    /// No `TO` table: its own inner table.
    NoTarget,
    /// These other views write into the same table: a rebuild from one view's SELECT would
    /// delete their rows of those keys.
    SharedTarget(Vec<String>),
    /// The engine lists it as fed by the table, but `system.tables` hides it from this user.
    Hidden,
}

/// The `TO` table of a view's `CREATE` (the word after its name, or after its `UUID`), as
/// written; none for a view with an inner table.
fn to_table(create: &str) -> Option<&str> {
    let rest = create.strip_prefix("CREATE MATERIALIZED VIEW ")?;
    let mut words = rest.split_whitespace().skip(1);
    loop {
        match words.next()? {
            "UUID" => {
                words.next()?;
            }
            "TO" => return words.next().map(|t| t.trim_end_matches(['(', ';'])),
            _ => return None,
        }
    }
}

/// The (database, table) a view writes, its own database where its `TO` names none.
fn target_of(view: &ViewRow) -> Option<(&str, &str)> {
    let to = to_table(&view.create_table_query)?;
    Some(match to.rsplit_once('.') {
        Some((db, table)) => (db.trim_matches('`'), table.trim_matches('`')),
        None => (view.database.as_str(), to.trim_matches('`')),
    })
}

/// The materialized views `database.table` feeds, as the engine lists them (its
/// `dependencies_*`: views in any database, whatever their SELECT's text looks like).
pub async fn rollups(client: &Client, database: &str, table: &str) -> Result<Vec<Rollup>, ChError> {
    // `system.tables` shows a user only what it has a privilege on: the names the engine
    // lists as fed by the table, against the views this user sees.
    let fed: Vec<(String, String)> = client
        .query(
            "SELECT fed.1, fed.2 FROM system.tables \
             ARRAY JOIN arrayZip(dependencies_database, dependencies_table) AS fed \
             WHERE database = ? AND name = ?",
        )
        .bind(database)
        .bind(table)
        .fetch_all::<(String, String)>()
        .await?;
    let views: Vec<ViewRow> = client
        .query(
            "SELECT engine, database, name, create_table_query, as_select FROM system.tables \
             WHERE engine = 'MaterializedView' OR (database, name) IN (\
               SELECT arrayJoin(arrayZip(dependencies_database, dependencies_table)) \
               FROM system.tables WHERE database = ? AND name = ?)",
        )
        .bind(database)
        .bind(table)
        .fetch_all::<ViewRow>()
        .await?;
    let declared = rebuild_declarations(SCHEMA_SQL);
    let shown = |db: &str, name: &str| {
        if db == database {
            name.to_owned()
        } else {
            format!("{db}.{name}")
        }
    };
    let mut out = Vec::new();
    for (db, name) in &fed {
        let qualified_view = format!("{db}.{name}");
        let Some(v) = views.iter().find(|v| v.database == *db && v.name == *name) else {
            // Not a view this user can see: a view of its own or one it may not see (it
            // would be listed if it could), or something else fed by the table.
            out.push(Rollup {
                view: shown(db, name),
                qualified_view,
                target: String::new(),
                rebuild: None,
                why_not: Some(NotRebuilt::Hidden),
                select: String::new(),
            });
            continue;
        };
        if v.engine != "MaterializedView" {
            continue; // a view that stores nothing
        }
        let (target, why_not) = match target_of(v) {
            None => (String::new(), Some(NotRebuilt::NoTarget)),
            Some((target_db, target)) => {
                let other = [v.database.as_str(), target_db]
                    .into_iter()
                    .find(|d| *d != database);
                let why_not = match other {
                    Some(other) => Some(NotRebuilt::OtherDatabase(other.to_owned())),
                    None if declared.iter().any(|d| d.table == target) => None,
                    None => Some(NotRebuilt::Undeclared),
                };
                (shown(target_db, target), why_not)
            }
        };
        // The declarations are schema.sql's, of views and tables in this database: a view or
        // table in another database is not one of them, whatever its name (not rebuilt).
        let rebuild = why_not
            .is_none()
            .then(|| declared.iter().find(|d| d.table == target).cloned())
            .flatten();
        out.push(Rollup {
            view: shown(&v.database, &v.name),
            qualified_view,
            target,
            rebuild,
            why_not,
            select: v.as_select.clone(),
        });
    }
    // A table two views write into (whatever they read): rebuilding one view's keys would
    // delete the other's rows.
    for rollup in out.iter_mut().filter(|r| !r.target.is_empty()) {
        let others: Vec<String> = views
            .iter()
            .filter(|v| v.engine == "MaterializedView")
            .filter(|v| format!("{}.{}", v.database, v.name) != rollup.qualified_view)
            .filter(|v| target_of(v).is_some_and(|(db, t)| shown(db, t) == rollup.target))
            .map(|v| shown(&v.database, &v.name))
            .collect();
        if !others.is_empty() {
            rollup.rebuild = None;
            rollup.why_not = Some(NotRebuilt::SharedTarget(others));
        }
    }
    out.sort_by(|a, b| (a.view.contains('.'), &a.view).cmp(&(b.view.contains('.'), &b.view)));
    Ok(out)
}

/// Where `sql` reads `database.table` (`FROM db.t` or `` FROM `db`.`t` ``, not
/// `FROM db.t_x`): the byte range of each mention.
pub(crate) fn mentions(sql: &str, database: &str, table: &str) -> Vec<std::ops::Range<usize>> {
    let sources = [
        format!("FROM {database}.{table}"),
        format!("FROM `{database}`.`{table}`"),
    ];
    let mut found: Vec<std::ops::Range<usize>> = sources
        .iter()
        .flat_map(|source| {
            sql.match_indices(source.as_str())
                .map(|(at, _)| at..at + source.len())
                .filter(|range| {
                    !sql[range.end..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                })
        })
        .collect();
    found.sort_by_key(|range| range.start);
    found
}

impl Rollup {
    /// The view where it cannot be rebuilt, with why (for a log line or a refusal).
    pub fn not_rebuilt(&self) -> String {
        let (view, target) = (&self.view, &self.target);
        match &self.why_not {
            None => format!("{view} (→ {target}: rebuilt)"),
            Some(NotRebuilt::Undeclared) => {
                format!("{view} (→ {target}: no `-- rebuild` declaration in clickhouse/schema.sql)")
            }
            Some(NotRebuilt::OtherDatabase(database)) => format!(
                "{view} (→ {target}: {database} is another database, which the sink does not rebuild)"
            ),
            Some(NotRebuilt::NoTarget) => {
                format!("{view} (no TO table: its inner table is not rebuilt by the sink)")
            }
            Some(NotRebuilt::SharedTarget(others)) => format!(
                "{view} (→ {target}: {} also write(s) into it, so rebuilding one view's keys \
                 would delete the other's rows)",
                others.join(", ")
            ),
            Some(NotRebuilt::Hidden) => format!(
                "{view} (the sink's user cannot see it in system.tables: GRANT SHOW TABLES, \
                 SHOW COLUMNS on it, as clickhouse/users.sql does)"
            ),
        }
    }

    /// Whether `name` (as ClickHouse names a view in an error: `db.view`, or `view`) is this
    /// view.
    pub fn is(&self, name: &str) -> bool {
        name == self.qualified_view || (!name.contains('.') && name == self.view)
    }
}

/// Deletes `rollup`'s rows of the keys `keys` (an SQL set of `toString(key)` values: a
/// subquery or a literal tuple) and inserts the view's SELECT over the raw rows of those
/// keys. Run again after a failure, it ends in the same state. The SELECT runs once first with
/// its result discarded: a view's query that refuses rows the table holds (a `throwIf`, a
/// cast) fails there, and the rollup keeps its rows of those keys instead of losing them.
pub async fn rebuild(
    client: &Client,
    db: &str,
    rollup: &Rollup,
    keys: &str,
) -> Result<(), ChError> {
    let key = &rollup.rebuild.as_ref().expect("declared").key;
    let target = format!("{db}.`{}`", rollup.target);
    // The view's columns are its SELECT's, by name (the view itself lists them).
    let columns: Vec<String> = client
        .query("SELECT name FROM system.columns WHERE database = ? AND table = ? ORDER BY position")
        .bind(db.trim_matches('`'))
        .bind(&rollup.view)
        .fetch_all::<String>()
        .await?;
    let list = columns
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let select = format!(
        "SELECT {list} FROM ({}) WHERE toString({key}) IN {keys}",
        unbound(&rollup.select)
    );
    client
        .query(&format!("{select} FORMAT Null"))
        .with_setting("max_query_size", LARGE_QUERY)
        .execute()
        .await?;
    client
        .query(&format!(
            "DELETE FROM {target} WHERE toString({key}) IN {keys}"
        ))
        .with_setting("lightweight_deletes_sync", "2")
        .with_setting("mutations_sync", "2")
        .with_setting("max_query_size", LARGE_QUERY)
        .execute()
        .await?;
    client
        .query(&format!("INSERT INTO {target} ({list}) {select}"))
        .with_setting("insert_deduplicate", "0")
        .with_setting("max_query_size", LARGE_QUERY)
        .execute()
        .await?;
    Ok(())
}

/// Statements that carry a literal set of keys (thousands of session ids) may be longer than
/// the server's default `max_query_size` (256 KiB).
pub(crate) const LARGE_QUERY: &str = "67108864";

/// The keys of each rollup that some raw rows touch (read before those rows are deleted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TouchedKeys {
    /// Rollups with a rebuild declaration, and their keys (as `toString` of the key).
    pub rollups: Vec<(Rollup, Vec<String>)>,
    /// Views the table feeds that cannot be rebuilt ([`Rollup::not_rebuilt`] says why).
    pub not_rebuilt: Vec<Rollup>,
    /// Per partition, the offset the progress table's maximum must not fall below in a
    /// rebuild: how far ClickHouse held it when rows deleted by hand were read again (maybe not
    /// all read again yet). Other partitions' maximum follows the table.
    pub progress_floor: std::collections::BTreeMap<i32, i64>,
    /// Per partition, offset ranges of rows read again, recorded before their INSERT: a sink
    /// killed after it, before it read their keys, leaves them to be read from the table by
    /// whoever takes the record over. Not keys themselves: a rebuild skips them.
    pub reread: std::collections::BTreeMap<i32, Vec<(i64, i64)>>,
}

impl TouchedKeys {
    /// No key to rebuild.
    pub fn is_empty(&self) -> bool {
        self.rollups.iter().all(|(_, keys)| keys.is_empty())
    }

    pub fn keys(&self) -> usize {
        self.rollups.iter().map(|(_, keys)| keys.len()).sum()
    }

    /// Adds `other`'s keys (each key once per rollup).
    pub fn merge(&mut self, other: TouchedKeys) {
        for (rollup, keys) in other.rollups {
            match self
                .rollups
                .iter_mut()
                .find(|(r, _)| r.target == rollup.target)
            {
                Some((_, mine)) => {
                    mine.extend(keys);
                    mine.sort_unstable();
                    mine.dedup();
                }
                None => self.rollups.push((rollup, keys)),
            }
        }
        for rollup in other.not_rebuilt {
            if !self
                .not_rebuilt
                .iter()
                .any(|r| r.qualified_view == rollup.qualified_view)
            {
                self.not_rebuilt.push(rollup);
            }
        }
        for (partition, floor) in other.progress_floor {
            let mine = self.progress_floor.entry(partition).or_insert(floor);
            *mine = (*mine).max(floor);
        }
        for (partition, ranges) in other.reread {
            let mine = self.reread.entry(partition).or_default();
            mine.extend(ranges);
            mine.sort_unstable();
            mine.dedup();
        }
    }
}

/// The views of `touched` that cannot be rebuilt, each with why, for a log line.
pub fn not_rebuilt(touched: &TouchedKeys) -> String {
    touched
        .not_rebuilt
        .iter()
        .map(Rollup::not_rebuilt)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per rollup, the keys the rows of `database.table` matching `condition` touch.
pub async fn touched_keys(
    client: &Client,
    database: &str,
    table: &str,
    condition: &str,
) -> Result<TouchedKeys, ChError> {
    let mut touched = TouchedKeys::default();
    for rollup in rollups(client, database, table).await? {
        let Some(rebuild) = &rollup.rebuild else {
            touched.not_rebuilt.push(rollup);
            continue;
        };
        let keys: Vec<String> = client
            .query(&format!(
                "SELECT DISTINCT toString({}) FROM `{database}`.`{table}` WHERE {condition}",
                rebuild.expression
            ))
            .fetch_all::<String>()
            .await?;
        touched.rollups.push((rollup, keys));
    }
    Ok(touched)
}

/// A string literal: `'a\'b'`. A `?` is doubled: the client reads a single one as a bind
/// placeholder in the query text.
pub fn literal(value: &str) -> String {
    format!(
        "'{}'",
        value
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('?', "??")
    )
}

/// SQL text taken from the server (a view's SELECT) for the query text: its `?` doubled (the
/// client reads a single one as a bind placeholder).
fn unbound(sql: &str) -> String {
    sql.replace('?', "??")
}

/// A literal set for `IN`: `('a', 'b')`.
pub fn literal_set(keys: &[String]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| literal(k)).collect();
    format!("({})", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mention_of_the_events_table_is_not_one_of_a_table_named_like_it() {
        let found = |sql: &str| mentions(sql, "db", "events");
        assert_eq!(found("SELECT a FROM db.events WHERE x"), vec![9..23]);
        assert_eq!(found("SELECT a FROM `db`.`events`"), vec![9..27]);
        assert_eq!(found("SELECT a FROM db.events"), vec![9..23]);
        assert!(found("SELECT a FROM db.events_x").is_empty());
        assert!(found("SELECT a FROM `db`.`events_x`").is_empty());
        assert_eq!(
            found("SELECT a FROM db.events_x UNION ALL SELECT a FROM `db`.`events`").len(),
            1
        );
    }

    #[test]
    fn a_view_not_rebuilt_says_why() {
        let mut rollup = Rollup {
            view: "v".into(),
            qualified_view: "db.v".into(),
            target: "t".into(),
            rebuild: None,
            why_not: Some(NotRebuilt::Undeclared),
            select: String::new(),
        };
        assert!(
            rollup
                .not_rebuilt()
                .contains("v (→ t: no `-- rebuild` declaration")
        );
        rollup.target = "other.t".into();
        rollup.why_not = Some(NotRebuilt::OtherDatabase("other".into()));
        assert!(
            rollup
                .not_rebuilt()
                .contains("v (→ other.t: other is another database")
        );
        rollup.why_not = Some(NotRebuilt::Hidden);
        assert!(rollup.not_rebuilt().contains("GRANT SHOW TABLES"));
        assert!(rollup.is("db.v") && rollup.is("v") && !rollup.is("other.v"));
    }

    #[test]
    fn the_to_table_is_the_word_after_the_view_name() {
        let create = |rest: &str| format!("CREATE MATERIALIZED VIEW db.v {rest}");
        assert_eq!(
            to_table(&create(
                "TO db.t (`x` UInt8) AS SELECT 1 AS x FROM db.events"
            )),
            Some("db.t")
        );
        assert_eq!(
            to_table(&create("UUID 'abc' TO `db`.`t` (`x` UInt8) AS SELECT 1")),
            Some("`db`.`t`")
        );
        assert_eq!(
            to_table(&create(
                "(`x` UInt8) ENGINE = MergeTree ORDER BY x AS SELECT x FROM db.events \
                 ORDER BY x WITH FILL FROM 1 TO 10"
            )),
            None
        );
    }

    #[test]
    fn a_literal_set_escapes_quotes_and_backslashes() {
        let keys = vec!["('clickstream',0)".to_owned(), "a\\b".to_owned()];
        assert_eq!(literal_set(&keys), r"('(\'clickstream\',0)', 'a\\b')");
        assert_eq!(literal("/p?x=1"), "'/p??x=1'");
    }
}
