//! The measurements: producing, the consume-only bound, draining a pre-loaded topic with one
//! or more sinks (optionally profiled, or into an endpoint that drops the INSERTs), the
//! latency of a stream at a fixed rate, and the bulk run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clickstream_testkit::{free_port, scrape_metrics};
use serde_json::{Value, json};

use super::Settings;
use super::procs::{self, Exit, Proc, RssSampler, round, whole};
use super::profile::{self, Profile};
use super::stack::Stack;

/// How often the drains poll `count()`.
pub(super) const POLL: Duration = Duration::from_millis(150);

pub(super) type Metrics = BTreeMap<String, f64>;

/// The binaries (copies: a concurrent build must not replace one under a measurement).
pub struct Bins {
    pub producer: PathBuf,
    pub sink: PathBuf,
    pub consume: PathBuf,
    /// The window publisher (the soak's; `None` where it is not built).
    pub windows: Option<PathBuf>,
}

pub struct Bench<'a> {
    pub stack: &'a Stack,
    pub bins: &'a Bins,
    pub work: &'a Path,
    pub settings: &'a Settings,
    /// The `-X` properties of the sink flags, passed to bench-consume too.
    kafka_x: Vec<String>,
    /// Makes the names of this run's topics, groups and databases unique.
    pub(super) run: String,
}

/// One drain of a topic ([`Bench::drain`]): `instances` sinks in one group from their start
/// until all `events` are queryable; about `points` progress and RSS samples kept.
#[derive(Debug, Clone)]
pub struct Drain<'t> {
    pub name: String,
    pub topic: &'t str,
    pub events: u64,
    pub instances: usize,
    /// The topic's payload bytes (from the bound), for the MB/s figures.
    pub payload_bytes: Option<f64>,
    pub mode: Mode,
    pub points: usize,
    /// More arguments for its sinks.
    pub args: Vec<String>,
}

/// What else a drain does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only the drain.
    Plain,
    /// `perf record` of the sink, the endpoint and the broker meanwhile (199 Hz, no call graphs).
    Profiled,
    /// The endpoint accepts the INSERTs and drops them unread (every other query is answered
    /// for real), so the sink alone is measured; done when the sinks report every row inserted.
    Discard,
}

impl<'t> Drain<'t> {
    /// One sink, plain, 60 samples.
    pub fn of(name: &str, topic: &'t str, events: u64, payload_bytes: Option<f64>) -> Self {
        Drain {
            name: name.to_owned(),
            topic,
            events,
            instances: 1,
            payload_bytes,
            mode: Mode::Plain,
            points: 60,
            args: Vec::new(),
        }
    }

    pub fn args(self, args: Vec<String>) -> Self {
        Drain { args, ..self }
    }

    pub fn sinks(self, instances: usize) -> Self {
        Drain { instances, ..self }
    }

    pub fn mode(self, mode: Mode) -> Self {
        Drain { mode, ..self }
    }

    pub fn points(self, points: usize) -> Self {
        Drain { points, ..self }
    }
}

/// A sink started by [`Bench::start_sinks`] and its `/metrics` port.
pub struct Sink {
    pub proc: Proc,
    pub port: u16,
}

impl<'a> Bench<'a> {
    pub fn new(
        stack: &'a Stack,
        bins: &'a Bins,
        work: &'a Path,
        settings: &'a Settings,
        run: String,
    ) -> Self {
        let kafka_x = settings
            .sink_args
            .windows(2)
            .filter(|w| w[0] == "-X")
            .map(|w| w[1].clone())
            .collect();
        Bench {
            stack,
            bins,
            work,
            settings,
            kafka_x,
            run,
        }
    }

    pub(super) fn log(&self, name: &str) -> PathBuf {
        self.work.join(format!("{name}.log"))
    }

    /// A sink's `/metrics` (empty if it does not answer within 5 s).
    pub(super) fn scrape(&self, port: u16) -> Metrics {
        self.stack
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), scrape_metrics(port)).await
            })
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    /// A tool's command line on the bench's broker and `topic`: `bin --brokers B --topic T`,
    /// with `-X` for each of `BENCH_KAFKA_PROPERTIES`.
    pub(super) fn argv(&self, bin: &Path, topic: &str) -> Vec<String> {
        let bin = bin.to_string_lossy().into_owned();
        let mut argv: Vec<String> = [
            bin,
            "--brokers".into(),
            self.stack.kafka.clone(),
            "--topic".into(),
            topic.into(),
        ]
        .into();
        for (key, value) in &self.settings.kafka_properties {
            argv.extend(["-X".to_owned(), format!("{key}={value}")]);
        }
        argv
    }

    /// The producer's command line: 3 partitions, seed 42, and `args`.
    pub(super) fn producer_argv(&self, topic: &str, args: &[&str]) -> Vec<String> {
        let mut argv = self.argv(&self.bins.producer, topic);
        argv.extend([
            "--partitions".into(),
            "3".into(),
            "--seed".into(),
            "42".into(),
        ]);
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    }

    /// Runs the producer (3 partitions, seed 42) with `args`; its JSON summary, with its CPU.
    pub fn produce(&self, topic: &str, name: &str, args: &[&str]) -> anyhow::Result<Value> {
        let argv = self.producer_argv(topic, args);
        let (out, exit) =
            procs::start(&argv, &self.log(name), true)?.finish(Duration::from_secs(3600))?;
        let mut summary = last_json(&out).with_context(|| format!("producer {name}"))?;
        let (sent, delivered) = (summary["sent"].as_u64(), summary["delivered"].as_u64());
        if sent.is_none() || sent != delivered {
            bail!("producer {name}: not every event delivered: {summary}");
        }
        summary["cpu_s"] = json!(round(exit.cpu_s, 2));
        Ok(summary)
    }

    /// bench-consume on the pre-loaded topic: the consume-only bound (`api`: stream or base).
    pub fn consume_bound(&self, topic: &str, api: &str, name: &str) -> anyhow::Result<Value> {
        let mut argv = self.argv(&self.bins.consume, topic);
        argv.extend([
            "--group".into(),
            format!("bench-{name}-{}", self.run),
            "--count".into(),
            self.settings.events.to_string(),
            "--api".into(),
            api.into(),
        ]);
        for x in &self.kafka_x {
            argv.extend(["-X".to_owned(), x.clone()]);
        }
        let (out, exit) =
            procs::start(&argv, &self.log(name), true)?.finish(Duration::from_secs(900))?;
        let mut result = last_json(&out).context("bench-consume")?;
        let messages = result["messages"].as_f64().unwrap_or(0.0).max(1.0);
        result["cpu_s"] = json!(round(exit.cpu_s, 2));
        result["peak_rss_mb"] = json!(round(exit.peak_rss_mb, 1));
        result["cpu_us_per_event"] = json!(round(exit.cpu_s / messages * 1e6, 2));
        say(&format!(
            "bound ({api}): {:.0} events/s, steady {:.0}",
            result["events_per_s"].as_f64().unwrap_or(0.0),
            result["steady_events_per_s"].as_f64().unwrap_or(0.0)
        ));
        Ok(result)
    }

    pub(super) fn start_sinks(
        &self,
        name: &str,
        topic: &str,
        group: &str,
        db: &str,
        instances: usize,
        extra: &[String],
    ) -> anyhow::Result<Vec<Sink>> {
        (0..instances)
            .map(|i| {
                let port = free_port();
                let mut argv = self.argv(&self.bins.sink, topic);
                argv.extend([
                    "--group".into(),
                    group.into(),
                    "--clickhouse-url".into(),
                    self.stack.clickhouse.clone(),
                    "--database".into(),
                    db.into(),
                    "--http-addr".into(),
                    format!("127.0.0.1:{port}"),
                ]);
                argv.extend(self.settings.sink_args.iter().cloned());
                argv.extend(extra.iter().cloned());
                let proc = procs::start(&argv, &self.log(&format!("{name}-sink{i}")), false)?;
                Ok(Sink { proc, port })
            })
            .collect()
    }

    fn stop_sinks(sinks: Vec<Sink>) -> anyhow::Result<Vec<Exit>> {
        sinks
            .into_iter()
            .map(|sink| {
                let pid = sink.proc.pid();
                let exit = sink.proc.reap(Duration::from_secs(60))?;
                if exit.code != 0 {
                    say(&format!("sink pid {pid} exited {}", exit.code));
                }
                Ok(exit)
            })
            .collect()
    }

    fn stack_cpu(&self) -> [Option<f64>; 2] {
        ["clickhouse", "kafka"].map(|s| self.stack.pid(s).and_then(procs::proc_cpu_s))
    }

    /// Sinks from their start until all the run's events of the topic are queryable (see
    /// [`Drain`]).
    pub fn drain(&self, run: &Drain<'_>) -> anyhow::Result<Value> {
        let Drain {
            ref name,
            topic,
            events,
            instances,
            payload_bytes,
            mode,
            points,
            ref args,
        } = *run;
        let (name, profile, discard) =
            (name.as_str(), mode == Mode::Profiled, mode == Mode::Discard);
        let (db, group) = (
            format!("bench_{name}_{}", self.run),
            format!("bench-{name}-{}", self.run),
        );
        let mut database = self.stack.database(&db)?;
        if discard {
            database.discard_inserts()?;
        }
        let inserted = |sinks: &[Sink]| -> u64 {
            sinks
                .iter()
                .map(|s| metric(&self.scrape(s.port), "clickstream_sink_inserted_rows_total"))
                .sum::<f64>() as u64
        };
        let (cpu0, machine0) = (self.stack_cpu(), procs::machine_cpu_s()?);
        let t0 = Instant::now();
        let mut sinks = self.start_sinks(name, topic, &group, &db, instances, args)?;
        let pids: Vec<u32> = sinks.iter().map(|s| s.proc.pid()).collect();
        let perf = if profile && profile::available() {
            let mut watched: Vec<Option<u32>> = pids.iter().copied().map(Some).collect();
            watched.extend([self.stack.pid("clickhouse"), self.stack.pid("kafka")]);
            Some(Profile::start(self.work, name, &watched)?)
        } else {
            None
        };
        let mut first: Option<(f64, u64)> = None;
        let (mut samples, mut metric_samples, mut rss_samples) = (vec![], vec![], vec![]);
        let mut next_scrape = t0;
        let deadline = t0 + Duration::from_secs_f64((events as f64 / 2000.0).max(600.0));
        loop {
            let count = if discard {
                inserted(&sinks)
            } else {
                self.stack.count(&db)?
            };
            let now = Instant::now();
            let seconds = (now - t0).as_secs_f64();
            samples.push(json!([round(seconds, 3), count]));
            if count > 0 && first.is_none() {
                first = Some((seconds, count));
            }
            if count >= events {
                break;
            }
            for sink in &mut sinks {
                if let Some(code) = sink.proc.exited() {
                    bail!(
                        "sink exited {code} during {name}; see {}",
                        sink.proc.log.display()
                    );
                }
            }
            if now > deadline {
                bail!("{name}: only {count} of {events} rows after {seconds:.0}s");
            }
            if now >= next_scrape {
                // The buffer and pause gauges and the RSS, once a second.
                metric_samples.push(
                    sinks
                        .iter()
                        .map(|s| self.scrape(s.port))
                        .collect::<Vec<_>>(),
                );
                rss_samples.extend(procs::rss_row(seconds, &pids));
                for sink in &mut sinks {
                    sink.proc.note_peak();
                }
                next_scrape = now + Duration::from_secs(1);
            }
            std::thread::sleep(POLL);
        }
        let total_s = t0.elapsed().as_secs_f64();
        rss_samples.extend(procs::rss_row(total_s, &pids));
        let (cpu1, machine1) = (self.stack_cpu(), procs::machine_cpu_s()?);
        // Rows can be queryable a moment before the sink counts its INSERT as done: give the
        // counters up to 5 s to catch up, so the INSERT figures below cover every row.
        let settle = Instant::now() + Duration::from_secs(5);
        while inserted(&sinks) < events && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(100));
        }
        let metrics: Vec<Metrics> = sinks.iter().map(|s| self.scrape(s.port)).collect();
        let profile_result = match perf {
            Some(perf) => {
                let names = HashMap::from_iter(
                    [
                        (Some(pids[0]), "sink"),
                        (self.stack.pid("clickhouse"), "clickhouse endpoint"),
                        (self.stack.pid("kafka"), "broker"),
                    ]
                    .into_iter()
                    .filter_map(|(pid, name)| Some((pid?, name))),
                );
                Some(perf.stop(&names)?)
            }
            None => None,
        };
        let processes = Self::stop_sinks(sinks)?;
        let (rows, unique) = if discard {
            let count = samples.last().and_then(|s| s[1].as_u64()).unwrap_or(0);
            (count, count)
        } else {
            self.stack.fetch_one::<(u64, u64)>(&format!(
                "SELECT count(), uniqExact(kafka_partition, kafka_offset) FROM {db}.events"
            ))?
        };
        let parts = self.stack.parts(&db)?;
        drop(database);

        let total = |key: &str| metrics.iter().map(|m| metric(m, key)).sum::<f64>();
        let (first_s, first_count) = first.unwrap_or((total_s, events));
        let steady_s = total_s - first_s;
        let steady_rate = if steady_s > 0.0 {
            events.saturating_sub(first_count) as f64 / steady_s
        } else {
            0.0
        };
        let inserts = total("clickstream_sink_inserts_total");
        let insert_s = total("clickstream_sink_insert_duration_seconds_sum");
        let inserted_rows = total("clickstream_sink_inserted_rows_total");
        let sink_cpu: f64 = processes.iter().map(|p| p.cpu_s).sum();
        let diff = |i: usize| Some(cpu1[i]? - cpu0[i]?);
        let (endpoint_cpu, broker_cpu) = (diff(0), diff(1));
        let busy = machine1.0 - machine0.0;
        let ours = sink_cpu + endpoint_cpu.unwrap_or(0.0) + broker_cpu.unwrap_or(0.0);
        let gauge = |key: &str| -> Vec<f64> {
            metric_samples
                .iter()
                .map(|sample| sample.iter().map(|m| metric(m, key)).sum())
                .collect()
        };
        let (paused, buffered) = (
            gauge("clickstream_sink_paused_partitions"),
            gauge("clickstream_sink_buffered_rows"),
        );
        let cores = procs::cores();
        let steady = |value: f64| (steady_s > 0.0).then_some(value);
        let mut result = json!({
            "instances": instances,
            "events": events,
            "rows": rows,
            "duplicates": rows as i64 - unique as i64,
            "total_s": round(total_s, 3),
            "first_row_s": round(first_s, 3),
            "rows_at_first_poll": first_count,
            "events_per_s": whole(events as f64 / total_s),
            "steady_s": round(steady_s, 3),
            "steady_events_per_s": whole(steady_rate),
            "mb_per_s": payload_bytes.map(|b| round(b / 1e6 / total_s, 2)),
            "steady_mb_per_s": payload_bytes.map(|b| round(b / events as f64 * steady_rate / 1e6, 2)),
            "inserts": inserts as u64,
            "inserts_per_s_steady": steady(round(inserts / steady_s, 2)),
            "mean_rows_per_insert": whole(inserted_rows / inserts.max(1.0)),
            "flushes": total("clickstream_sink_batch_rows_count") as u64,
            "mean_rows_per_flush": whole(total("clickstream_sink_batch_rows_sum")
                / total("clickstream_sink_batch_rows_count").max(1.0)),
            "parts_created_by_inserts": parts.created_by_inserts,
            "parts_total": parts.total_parts,
            "parts_active": parts.active_parts,
            "level0_parts_left": parts.level0_parts,
            "sink_cpu_s": round(sink_cpu, 2),
            "sink_peak_rss_mb": round(processes.iter().map(|p| p.peak_rss_mb).fold(0.0, f64::max), 1),
            "sink_cpu_us_per_event": round(sink_cpu / events as f64 * 1e6, 2),
            "insert_duration_s_sum": round(insert_s, 2),
            "mean_insert_s": round(insert_s / inserts.max(1.0), 3),
            // How fast the endpoint takes rows while an INSERT is in flight.
            "rows_per_s_while_inserting": whole(inserted_rows / insert_s.max(1e-9)),
            "insert_in_flight_share_of_steady": steady(round(insert_s / instances as f64 / steady_s, 3)),
            "clickhouse_endpoint_cpu_s": endpoint_cpu.map(|c| round(c, 2)),
            "broker_cpu_s": broker_cpu.map(|c| round(c, 2)),
            "endpoint_rss_mb_at_end": self.stack.pid("clickhouse").and_then(procs::proc_rss_mb),
            "broker_rss_mb_at_end": self.stack.pid("kafka").and_then(procs::proc_rss_mb),
            "machine_busy_cpu_s": round(busy, 2),
            "other_processes_cpu_s": round((busy - ours).max(0.0), 2),
            "machine_capacity_cpu_s": round(total_s * cores as f64, 2),
            "paused_share_of_samples": (!paused.is_empty()).then(||
                round(paused.iter().filter(|&&p| p > 0.0).count() as f64 / paused.len() as f64, 3)),
            "max_buffered_rows": buffered.iter().copied().reduce(f64::max).map(|b| b as u64),
            "retries": total("clickstream_sink_retries_total") as u64,
            "dead_lettered": total("clickstream_sink_dead_lettered_total") as u64,
            "processes": processes.iter().map(|p| json!({
                "exit_code": p.code, "cpu_s": round(p.cpu_s, 2), "peak_rss_mb": round(p.peak_rss_mb, 1),
            })).collect::<Vec<_>>(),
            "profile": profile_result,
            "progress": procs::downsample(&samples, points),
            // [seconds, MB of each sink]; the peak between samples is in sink_peak_rss_mb.
            "rss_mb_samples": procs::downsample(&rss_samples, points),
        });
        let per_event = |cpu: Option<f64>| cpu.map(|c| round(c / events as f64 * 1e6, 2));
        let per_event = [
            Some(round(sink_cpu / events as f64 * 1e6, 2)),
            per_event(endpoint_cpu),
            per_event(broker_cpu),
        ];
        result["cpu_us_per_event"] = json!({
            "sink": per_event[0], "clickhouse_endpoint": per_event[1], "broker": per_event[2],
        });
        if let [Some(a), Some(b), Some(c)] = per_event {
            // If the three had the machine to themselves: cores / CPU time per event.
            result["cpu_limited_events_per_s"] = json!(whole(cores as f64 * 1e6 / (a + b + c)));
        }
        say(&format!(
            "{name}: {instances} sink(s): {events} rows in {total_s:.1}s ({}/s; first row \
             {first_s:.1}s, steady {}/s), {inserts} inserts",
            result["events_per_s"], result["steady_events_per_s"]
        ));
        if rows != events || rows != unique {
            say(&format!(
                "WARNING {name}: {rows} rows, {} duplicates",
                rows as i64 - unique as i64
            ));
        }
        Ok(result)
    }

    /// A sink on a fresh topic (joined first: a warm-up event must be queryable), the producer
    /// at `rate` for the configured seconds, then event-to-queryable latency over the run's
    /// rows from the table itself (`inserted_at - event_time`), and inserts per second.
    pub fn latency(&self, flush: &str, rate: u64) -> anyhow::Result<Value> {
        let name = format!("lat-{flush}-{rate}");
        let run = &self.run;
        let (topic, db, group) = (
            format!("bench-{name}-{run}"),
            format!("bench_lat_{flush}_{rate}_{run}"),
            format!("bench-{name}-{run}"),
        );
        let flush_ms = flush_ms(flush)?;
        let extra = if flush == "default" {
            vec![]
        } else {
            vec!["--flush-interval-ms".to_owned(), flush.to_owned()]
        };
        // The topic, with one warm-up event: once that is queryable, the sink has joined.
        self.produce(
            &topic,
            &format!("{name}-warmup"),
            &["--rate", "max", "--count", "1"],
        )?;
        let database = self.stack.database(&db)?;
        let mut sinks = self.start_sinks(&name, &topic, &group, &db, 1, &extra)?;
        let (pid, port) = (sinks[0].proc.pid(), sinks[0].port);
        let t0 = Instant::now();
        let rss = RssSampler::start(vec![pid], t0);
        while self.stack.count(&db)? < 1 {
            if sinks[0].proc.exited().is_some() || t0.elapsed() > Duration::from_secs(120) {
                bail!(
                    "{name}: the sink did not insert the warm-up event; see {}",
                    sinks[0].proc.log.display()
                );
            }
            std::thread::sleep(POLL);
        }
        let ready_s = t0.elapsed().as_secs_f64();
        let m0 = self.scrape(port);
        let cpu0 = procs::proc_cpu_s(pid);
        let start_ms = chrono::Utc::now().timestamp_millis();
        let tp0 = Instant::now();
        let seconds = self.settings.seconds_per_rate;
        let summary = self.produce(
            &topic,
            &name,
            &[
                "--rate",
                &rate.to_string(),
                "--duration",
                &format!("{seconds}s"),
            ],
        )?;
        let tp1 = Instant::now();
        let m1 = self.scrape(port);
        let delivered = summary["delivered"]
            .as_u64()
            .context("producer: delivered")?;
        let at_producer_end = self.stack.count(&db)?.saturating_sub(1);
        let deadline = Instant::now() + Duration::from_secs((3 * seconds).max(120));
        loop {
            let count = self.stack.count(&db)?;
            if count > delivered {
                break;
            }
            if sinks[0].proc.exited().is_some() || Instant::now() > deadline {
                bail!(
                    "{name}: {} of {delivered} rows; see {}",
                    count.saturating_sub(1),
                    sinks[0].proc.log.display()
                );
            }
            std::thread::sleep(POLL);
        }
        let drain_s = tp1.elapsed().as_secs_f64();
        let m2 = self.scrape(port);
        let cpu1 = procs::proc_cpu_s(pid);
        let rss_samples = rss.stop();
        let peak_rss_mb = round(
            Self::stop_sinks(std::mem::take(&mut sinks))?[0].peak_rss_mb,
            1,
        );
        let d = "toUnixTimestamp64Milli(inserted_at) - toUnixTimestamp64Milli(event_time)";
        let since = format!("event_time >= fromUnixTimestamp64Milli(toInt64({start_ms}), 'UTC')");
        let all: Latencies = self.stack.fetch_one(&format!(
            "SELECT count() AS rows, \
             arrayMap(x -> toInt64(x), quantilesExact(0.5, 0.95, 0.99)({d})) AS quantiles, \
             toInt64(max({d})) AS max, toInt64(min({d})) AS min, toFloat64(avg({d})) AS mean, \
             uniqExact(inserted_at) AS distinct_times FROM {db}.events WHERE {since}"
        ))?;
        // The run's last partial batch waits the whole flush interval after the producer
        // stops; a stream that goes on never sees that. The same figures without the rows made
        // in the last flush interval (and 1 s) of the run:
        let end_ms = start_ms + (tp1 - tp0).as_millis() as i64 - flush_ms as i64 - 1000;
        let steady: Latencies = self.stack.fetch_one(&format!(
            "SELECT count() AS rows, \
             arrayMap(x -> toInt64(x), quantilesExact(0.5, 0.95, 0.99)({d})) AS quantiles, \
             toInt64(max({d})) AS max, toInt64(min({d})) AS min, toFloat64(avg({d})) AS mean, \
             uniqExact(inserted_at) AS distinct_times FROM {db}.events WHERE {since} \
             AND event_time < fromUnixTimestamp64Milli(toInt64({end_ms}), 'UTC')"
        ))?;
        drop(database);
        self.stack.delete_topic(&topic);
        let window = (tp1 - tp0).as_secs_f64();
        let inserts = |m: &Metrics| metric(m, "clickstream_sink_inserts_total");
        let inserts_run = inserts(&m2) - inserts(&m0);
        let result = json!({
            "rate": rate,
            "flush_interval_ms": flush_ms,
            "flush_setting": if flush == "default" {
                "sink default".to_owned()
            } else {
                format!("--flush-interval-ms {flush}")
            },
            "seconds": seconds,
            "delivered": delivered,
            "produced_per_s": round(summary["rate_per_s"].as_f64().unwrap_or(0.0), 1),
            "rows": all.rows,
            "latency_ms": {"p50": all.quantile(0), "p95": all.quantile(1), "p99": all.quantile(2),
                           "max": all.max, "min": all.min, "mean": all.mean.round_ties_even() as i64},
            "latency_ms_without_last_interval": (steady.rows > 0).then(|| json!({
                "rows": steady.rows, "p50": steady.quantile(0), "p95": steady.quantile(1),
                "p99": steady.quantile(2), "max": steady.max,
            })),
            "inserts_per_s": round((inserts(&m1) - inserts(&m0)) / window, 2),
            "inserts": inserts_run as u64,
            "distinct_insert_times": all.distinct_times,
            "mean_rows_per_insert": (inserts_run > 0.0).then(|| whole(all.rows as f64 / inserts_run)),
            "backlog_at_producer_end": delivered as i64 - at_producer_end as i64,
            "drain_after_producer_s": round(drain_s, 2),
            "sink_ready_s": round(ready_s, 2),
            "sink_cpu_s": cpu0.zip(cpu1).map(|(a, b)| round(b - a, 2)),
            "sink_peak_rss_mb": peak_rss_mb,
            // [seconds since the sink started, MB]; the producer started after sink_ready_s.
            "rss_mb_samples": procs::downsample(&rss_samples, 60),
        });
        say(&format!(
            "latency {} @ {rate}/s: p50 {} ms, p99 {} ms, max {} ms, {} inserts/s",
            result["flush_setting"].as_str().unwrap_or_default(),
            result["latency_ms"]["p50"],
            result["latency_ms"]["p99"],
            all.max,
            result["inserts_per_s"]
        ));
        Ok(result)
    }

    /// The reference's bulk run: `events` produced at `--rate max` into a fresh topic, then
    /// drained by one sink with the defaults; the drain's figures plus the producer's and the
    /// comparison.
    pub fn bulk(&self, events: u64) -> anyhow::Result<Value> {
        let topic = format!("bench-bulk-{}", self.run);
        say(&format!("bulk: producing {events} events into {topic}"));
        let mut producer = self.produce(
            &topic,
            "bulk-produce",
            &["--rate", "max", "--count", &events.to_string()],
        )?;
        if let Some(map) = producer.as_object_mut() {
            map.remove("per_partition");
        }
        let produce_s = producer["elapsed_s"].as_f64().unwrap_or(0.0);
        say(&format!(
            "bulk: produced in {produce_s:.1}s; draining with one sink"
        ));
        let drained = self.drain(&Drain::of("bulk", &topic, events, None).points(200));
        self.stack.delete_topic(&topic);
        let mut result = drained?;
        let reference = &crate::report::REFERENCE;
        let reference_s = reference.minutes as f64 * 60.0 * events as f64 / reference.events as f64;
        let total_s = result["total_s"].as_f64().unwrap_or(f64::NAN);
        let extra = json!({
            "producer": producer,
            "produce_s": round(produce_s, 2),
            "produce_then_drain_s": round(produce_s + total_s, 2),
            "reference": reference,
            // Reference time scaled to this run's events / ours (> 1: faster than the reference).
            "vs_reference": {
                "reference_s_for_these_events": round(reference_s, 1),
                "drain_speedup": round(reference_s / total_s, 2),
                "produce_then_drain_speedup": round(reference_s / (produce_s + total_s), 2),
            },
        });
        if let (Some(map), Value::Object(extra)) = (result.as_object_mut(), extra) {
            map.extend(extra);
        }
        Ok(result)
    }
}

/// Event-to-queryable latency over some rows of a latency run, in milliseconds.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Latencies {
    rows: u64,
    /// p50, p95, p99.
    quantiles: Vec<i64>,
    max: i64,
    min: i64,
    mean: f64,
    distinct_times: u64,
}

impl Latencies {
    fn quantile(&self, i: usize) -> Option<i64> {
        self.quantiles.get(i).copied()
    }
}

/// The flush interval of a latency run: the sink's default, or the number given.
pub fn flush_ms(flush: &str) -> anyhow::Result<u64> {
    if flush == "default" {
        Ok(crate::report::sink_default_flush_interval_ms())
    } else {
        flush
            .parse()
            .with_context(|| format!("BENCH_FLUSH: `{flush}` is neither `default` nor a number"))
    }
}

pub(super) fn metric(metrics: &Metrics, key: &str) -> f64 {
    metrics.get(key).copied().unwrap_or(0.0)
}

/// The last line of a tool's stdout, as JSON.
pub(super) fn last_json(out: &str) -> anyhow::Result<Value> {
    let line = out.trim().lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))
}

pub fn say(text: &str) {
    eprintln!("bench: {text}");
}
