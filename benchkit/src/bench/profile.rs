//! A flat CPU profile of one drain: `perf record -F 199` (no call graphs) of the sink, the
//! endpoint and the broker, summarised by process, the endpoint by library, the sink by
//! thread, by crate or library, and by symbol.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::procs::{self, Proc};

/// A running `perf record`.
pub struct Profile {
    perf: Proc,
    data: PathBuf,
}

/// Whether `perf` is on the PATH.
pub fn available() -> bool {
    Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Profile {
    /// Starts recording `pids` (those that are `Some`) into `work/<name>.perf.data`.
    pub fn start(work: &Path, name: &str, pids: &[Option<u32>]) -> anyhow::Result<Profile> {
        let data = work.join(format!("{name}.perf.data"));
        let pids: Vec<String> = pids.iter().flatten().map(u32::to_string).collect();
        let args = [
            "perf",
            "record",
            "-F",
            "199",
            "-o",
            &data.to_string_lossy(),
            "-p",
            &pids.join(","),
        ]
        .map(String::from);
        let perf = procs::start(&args, &work.join(format!("{name}-perf.log")), false)?;
        Ok(Profile { perf, data })
    }

    /// Stops recording and summarises the samples; `names`: pid → the group it counts in
    /// (`sink`, `clickhouse endpoint`, `broker`; other pids count as `other`).
    pub fn stop(self, names: &HashMap<u32, &str>) -> anyhow::Result<Value> {
        self.perf.signal(Signal::SIGINT);
        self.perf.wait(Duration::from_secs(60))?;
        let script = Command::new("perf")
            .args(["script", "-i"])
            .arg(&self.data)
            .args(["-F", "pid,tid,comm,ip,sym,dso"])
            .output()?;
        Ok(summarise(&String::from_utf8_lossy(&script.stdout), names))
    }
}

/// One line of `perf script -F pid,tid,comm,ip,sym,dso`:
/// `  comm  pid/tid  ip sym (dso)`; the command name may hold spaces.
fn parse(line: &str) -> Option<(&str, u32, &str, &str)> {
    let line = line.trim();
    let open = line.rfind('(')?;
    let dso = line[open + 1..].strip_suffix(')')?;
    if dso.contains(['(', ')']) {
        return None; // `(/path (deleted))`: not a sample line the summary reads
    }
    let head = line[..open].trim_end();
    // The first `pid/tid` token; what comes before it is the command name (spaces and all).
    let mut tokens = head
        .split(char::is_whitespace)
        .filter(|t| !t.is_empty())
        .map(|t| (t.as_ptr() as usize - head.as_ptr() as usize, t));
    let (at, pid_tid) = tokens.find(|(_, t)| {
        t.split_once('/').is_some_and(|(p, t)| {
            !p.is_empty()
                && !t.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && t.bytes().all(|b| b.is_ascii_digit())
        })
    })?;
    let comm = head[..at].trim();
    let pid = pid_tid.split_once('/')?.0.parse().ok()?;
    let rest = head[at + pid_tid.len()..].trim_start();
    let (_ip, sym) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    Some((comm, pid, sym.trim(), dso))
}

/// The crate of a Rust symbol (`clickstream_event::decode_ref` → `clickstream_event`), past
/// `<`, `&`, `mut `, `dyn `.
fn crate_of(sym: &str) -> Option<&str> {
    let sym = sym.trim_start_matches(['<', '&', ' ', '\t']);
    let sym = ["mut ", "dyn "]
        .iter()
        .find_map(|p| sym.strip_prefix(p))
        .map_or(sym, str::trim_start);
    let end = sym
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(sym.len());
    let name = &sym[..end];
    (!name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && sym[end..].starts_with("::"))
    .then_some(name)
}

/// Samples per key, with the order each key was first seen (ties keep it).
#[derive(Default)]
struct Tally(HashMap<String, (u64, usize)>);

impl Tally {
    fn add(&mut self, key: String) {
        let next = self.0.len();
        self.0.entry(key).or_insert((0, next)).0 += 1;
    }
}

fn summarise(script: &str, names: &HashMap<u32, &str>) -> Value {
    let mut by_process = Tally::default();
    let mut endpoint = Tally::default();
    let mut thread = Tally::default();
    let mut krate = Tally::default();
    let mut symbol = Tally::default();
    let mut samples = 0;
    for (comm, pid, sym, dso) in script.lines().filter_map(parse) {
        samples += 1;
        let process = names.get(&pid).copied().unwrap_or("other");
        let dso = Path::new(dso)
            .file_name()
            .map_or(dso.to_owned(), |n| n.to_string_lossy().into_owned());
        by_process.add(process.to_owned());
        if process == "clickhouse endpoint" {
            endpoint.add(dso);
        } else if process == "sink" {
            thread.add(comm.to_owned());
            symbol.add(sym.to_owned());
            let name = match crate_of(sym) {
                Some(name) if dso == "clickstream-sink" => name.to_owned(),
                _ => dso,
            };
            krate.add(name);
        }
    }
    json!({
        "note": format!("perf record -F 199 (no call graphs) of the sink, the endpoint and the \
                         broker over a repeat of the run, {samples} samples; % of each group's samples"),
        "by_process": top(&by_process, 4),
        "endpoint_by_library": top(&endpoint, 5),
        "sink_by_thread": top(&thread, 6),
        "sink_by_crate_or_library": top(&krate, 10),
        "sink_by_symbol": top(&symbol, 12),
    })
}

/// The `limit` largest entries as `[percent, key]`, largest first (ties: first seen first).
fn top(table: &Tally, limit: usize) -> Value {
    let total = table.0.values().map(|(n, _)| n).sum::<u64>().max(1) as f64;
    let mut ranked: Vec<(&String, &(u64, usize))> = table.0.iter().collect();
    ranked.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.1.1.cmp(&b.1.1)));
    ranked
        .into_iter()
        .take(limit)
        .map(|(key, (n, _))| json!([procs::round(100.0 * *n as f64 / total, 1), key]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_script_lines_parse() {
        let line = "  producer pollin  4242/4250  55d0c0ffee clickstream_event::decode_ref (/tmp/bin/clickstream-sink)";
        assert_eq!(
            parse(line),
            Some((
                "producer pollin",
                4242,
                "clickstream_event::decode_ref",
                "/tmp/bin/clickstream-sink"
            ))
        );
        let unknown = "python3 77/78 7f00 [unknown] (/usr/lib/libc.so.6)";
        assert_eq!(
            parse(unknown),
            Some(("python3", 77, "[unknown]", "/usr/lib/libc.so.6"))
        );
        assert_eq!(parse("not a sample"), None);
        assert_eq!(parse("a\u{a0}b 5/6 1 f (/x (deleted))"), None);
        assert_eq!(
            parse("a\u{a0}b 5/6 1 f (/x)"),
            Some(("a\u{a0}b", 5, "f", "/x"))
        );
    }

    #[test]
    fn a_symbol_s_crate() {
        assert_eq!(
            crate_of("clickstream_event::fast::Scan::string"),
            Some("clickstream_event")
        );
        assert_eq!(
            crate_of("<&mut serde_json::de::Deserializer as X>::f"),
            Some("serde_json")
        );
        assert_eq!(crate_of("<dyn core::any::Any>::is"), Some("core"));
        assert_eq!(crate_of("__memmove_avx_unaligned_erms"), None);
    }

    #[test]
    fn the_summary_counts_per_group() {
        let names = HashMap::from([(1, "sink"), (2, "clickhouse endpoint")]);
        let script = "decode 1/3 1 clickstream_event::decode_ref (/x/clickstream-sink)\n\
                      decode 1/3 1 malloc (/lib/libc.so.6)\n\
                      python 2/2 1 f (/lib/_chdb.abi3.so)\n\
                      other 9/9 1 g (/lib/y.so)\n";
        let summary = summarise(script, &names);
        assert_eq!(summary["by_process"][0], json!([50.0, "sink"]));
        assert_eq!(
            summary["endpoint_by_library"],
            json!([[100.0, "_chdb.abi3.so"]])
        );
        assert_eq!(
            summary["sink_by_crate_or_library"],
            json!([[50.0, "clickstream_event"], [50.0, "libc.so.6"]])
        );
    }
}
