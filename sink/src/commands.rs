//! The binary's operations commands (`verify`, `replay`, `dlq inspect`, `dlq replay`): their
//! arguments, and their reports printed for people or as JSON. The work is in
//! [`clickstream_sink::ops`].

use std::collections::BTreeMap;

use clap::{Arg, ArgAction, ArgMatches, Command};
use clickstream_sink::SinkError;
use clickstream_sink::ops::{self, dlq, replay, verify};
use clickstream_sink::settings::Settings;

const OK: i32 = 0;
const PROBLEM: i32 = 1;
const USAGE: i32 = 2;

fn json_flag() -> Arg {
    Arg::new("json")
        .long("json")
        .action(ArgAction::SetTrue)
        .help("print the report as JSON")
}

fn since_flag(help: &'static str) -> Arg {
    Arg::new("since")
        .long("since")
        .value_name("TIME")
        .help(help)
}

fn reason_flag() -> Arg {
    Arg::new("reason")
        .long("reason")
        .value_name("REASON")
        .action(ArgAction::Append)
        .help(
            "only letters of this reason (repeatable), e.g. timestamp_out_of_window, invalid_json",
        )
}

/// The commands, with their own arguments (the settings' flags are global).
pub fn all() -> Vec<Command> {
    vec![
        Command::new("verify")
            .about("Is everything there? Kafka's offsets against ClickHouse and the dead-letter topic, rollups against the raw table")
            .long_about(
                "Per partition: the offsets below the group's committed offset must each be stored \
                 once in ClickHouse or be in the dead-letter topic; reports missing offsets (as \
                 ranges), offsets stored twice, offsets both stored and dead-lettered, and the \
                 uncommitted tail as \"in flight\" (safe while sinks run). Then every rollup \
                 against an aggregate of the raw table, window by window. Exit 1 on any problem.",
            )
            .arg(since_flag("only offsets from the first message at or after TIME, and windows from TIME (RFC 3339, `2026-11-30 10:00` UTC, a date, or an age: 90m, 6h, 3d)"))
            .arg(json_flag()),
        Command::new("replay")
            .about("Re-read a range exactly once: delete it, rebuild the rollups it touched, reset the group (sinks stopped)")
            .long_about(
                "Refuses while the group has active members, or while another replay or dlq \
                 replay runs (a lease in the table ops_leases). Finds per partition the first offset \
                 at or after --since (or takes --from), shows the plan (offsets, rows, rollup \
                 keys) and asks, then: records the plan, deletes the range's rows, rebuilds every \
                 rollup for the keys they touched, resets the group's offsets. The next sink \
                 start re-inserts the range exactly once. A run stopped part-way is finished by \
                 the next run (`replay` without a range finishes it); sinks refuse to start \
                 until then.",
            )
            .arg(since_flag("replay from the first message at or after TIME in every partition"))
            .arg(
                Arg::new("from")
                    .long("from")
                    .value_name("PARTITION:OFFSET")
                    .action(ArgAction::Append)
                    .conflicts_with("since")
                    .help("replay this partition from this offset (repeatable)"),
            )
            .arg(
                Arg::new("dry-run")
                    .long("dry-run")
                    .action(ArgAction::SetTrue)
                    .help("show the plan, change nothing"),
            )
            .arg(
                Arg::new("yes")
                    .long("yes")
                    .short('y')
                    .action(ArgAction::SetTrue)
                    .help("do not ask for confirmation"),
            )
            .arg(json_flag()),
        Command::new("dlq")
            .about("The dead-letter topic: inspect it, replay its letters that are valid now")
            .subcommand_required(true)
            .subcommand(
                Command::new("inspect")
                    .about("Counts by reason and by hour, samples per reason; repeats counted once")
                    .arg(reason_flag())
                    .arg(since_flag("only letters dead-lettered at or after TIME"))
                    .arg(
                        Arg::new("samples")
                            .long("samples")
                            .value_name("N")
                            .default_value("3")
                            .value_parser(clap::value_parser!(usize))
                            .help("samples per reason"),
                    )
                    .arg(json_flag()),
            )
            .subcommand(
                Command::new("replay")
                    .about("Insert the letters valid now (current contract and settings) under their source offsets, exactly once (sinks stopped, one run at a time)")
                    .arg(reason_flag())
                    .arg(since_flag("only letters dead-lettered at or after TIME"))
                    .arg(
                        Arg::new("dry-run")
                            .long("dry-run")
                            .action(ArgAction::SetTrue)
                            .help("show what would be inserted, change nothing"),
                    )
                    .arg(json_flag()),
            ),
    ]
}

/// Writes the report on stdout; a reader that went away (`verify | head`) is not an error
/// (`println!` panicked on the closed pipe), any other failure (a full disk) is (exit 1).
fn print<T: serde::Serialize + std::fmt::Display>(report: &T, json: bool) {
    use std::io::Write;
    let text = if json {
        serde_json::to_string_pretty(report).expect("reports serialize") + "\n"
    } else {
        report.to_string()
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: writing the report: {e}");
            std::process::exit(1);
        }
        _ => {}
    }
}

fn failed(error: &SinkError) -> i32 {
    // The message names its source already.
    eprintln!("error: {error}");
    if matches!(error, SinkError::Settings(_)) {
        USAGE
    } else {
        PROBLEM
    }
}

fn since(args: &ArgMatches) -> Result<Option<chrono::DateTime<chrono::Utc>>, i32> {
    match args.get_one::<String>("since") {
        None => Ok(None),
        Some(text) => ops::parse_time(text, chrono::Utc::now())
            .map(Some)
            .map_err(|e| {
                eprintln!("error: --since {e}");
                USAGE
            }),
    }
}

/// The `--reason` values, each one the sink writes (a misspelt one would match nothing and
/// report 0 letters as if all were well).
fn reasons(args: &ArgMatches) -> Result<Vec<String>, i32> {
    let known: Vec<&str> = clickstream_event::RejectReason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain([clickstream_sink::flush::REJECTED_BY_CLICKHOUSE])
        .collect();
    let given: Vec<String> = args
        .get_many::<String>("reason")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if let Some(unknown) = given.iter().find(|r| !known.contains(&r.as_str())) {
        eprintln!(
            "error: --reason {unknown}: no such reason; the sink writes {}",
            known.join(", ")
        );
        return Err(USAGE);
    }
    Ok(given)
}

/// Runs the command `name`; returns the exit code.
pub async fn run(name: &str, args: &ArgMatches, settings: &Settings) -> i32 {
    let json = args.try_get_one::<bool>("json").ok().flatten() == Some(&true);
    match name {
        "verify" => {
            let since = match since(args) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match verify::verify(settings, since).await {
                Ok(report) => {
                    print(&report, json);
                    if report.ok() { OK } else { PROBLEM }
                }
                Err(e) => failed(&e),
            }
        }
        "replay" => {
            let start = if let Some(from) = args.get_many::<String>("from") {
                let mut parsed = BTreeMap::new();
                for item in from {
                    let Some((p, o)) = item
                        .split_once(':')
                        .and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)))
                        .filter(|&(p, o)| p >= 0 && o >= 0)
                    else {
                        eprintln!("error: --from {item}: expected PARTITION:OFFSET, e.g. 0:1500");
                        return USAGE;
                    };
                    if let Some(first) = parsed.insert(p, o) {
                        eprintln!(
                            "error: --from {p}:{first} and --from {item}: one start per partition"
                        );
                        return USAGE;
                    }
                }
                replay::Start::From(parsed)
            } else {
                match since(args) {
                    Ok(Some(t)) => replay::Start::Since(t),
                    Ok(None) => replay::Start::Unfinished,
                    Err(code) => return code,
                }
            };
            let options = replay::Options {
                start,
                dry_run: args.get_flag("dry-run"),
                yes: args.get_flag("yes"),
            };
            match replay::replay(settings, &options, replay::ask_on_terminal).await {
                Ok(done) => {
                    print(&done, json);
                    OK
                }
                Err(replay::ReplayError::Usage(e)) => {
                    eprintln!("error: {e}");
                    USAGE
                }
                Err(replay::ReplayError::Refused(e)) => {
                    eprintln!("replay refused: {e}");
                    PROBLEM
                }
                Err(replay::ReplayError::Sink(e)) => failed(&e),
            }
        }
        "dlq" => {
            let Some((sub, args)) = args.subcommand() else {
                return USAGE;
            };
            let json = args.get_flag("json");
            let since = match since(args) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let reasons = match reasons(args) {
                Ok(r) => r,
                Err(code) => return code,
            };
            match sub {
                "inspect" => {
                    let samples = args.get_one::<usize>("samples").copied().unwrap_or(3);
                    match dlq::inspect(settings, &reasons, since, samples).await {
                        Ok(report) => {
                            print(&report, json);
                            OK
                        }
                        Err(e) => failed(&e),
                    }
                }
                "replay" => {
                    match dlq::replay(settings, &reasons, since, args.get_flag("dry-run")).await {
                        Ok(report) => {
                            print(&report, json);
                            if report.ok() { OK } else { PROBLEM }
                        }
                        Err(replay::ReplayError::Refused(e)) => {
                            eprintln!("dlq replay refused: {e}");
                            PROBLEM
                        }
                        Err(replay::ReplayError::Usage(e)) => {
                            eprintln!("error: {e}");
                            USAGE
                        }
                        Err(replay::ReplayError::Sink(e)) => failed(&e),
                    }
                }
                _ => USAGE,
            }
        }
        _ => USAGE,
    }
}
