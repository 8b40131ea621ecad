//! The processes the bench starts, and what the kernel says about them: CPU time, resident
//! memory (now and peak), the machine's busy time.
//!
//! A child's CPU time is the growth of `getrusage(RUSAGE_CHILDREN)` across its reaping (the
//! bench reaps one child at a time, on one thread). Its peak memory is its own `VmHWM`, read
//! until it exits: the kernel's `ru_maxrss` of children is the largest of any child, and also
//! counts the parent's address space a child was forked from.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The pids of every child started and not yet reaped: killed by [`kill_all`] when the bench
/// is interrupted.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    CHILDREN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Set once SIGINT or SIGTERM arrived: no child is started after it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The bench was interrupted: SIGKILLs every child still running, and [`start`] refuses to
/// start another, so the main thread fails on its way and unwinds (stopping the stack once).
pub fn interrupt() {
    let mut children = children();
    INTERRUPTED.store(true, Ordering::SeqCst);
    for pid in children.drain(..) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A child process whose stderr goes to its log file.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
    name: String,
    /// The largest `VmHWM` read so far.
    peak_mb: Option<f64>,
}

/// How a child ended: its exit code, user + system CPU seconds and peak RSS in MB.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub code: i32,
    pub cpu_s: f64,
    pub peak_rss_mb: f64,
}

/// A command for `program` that the kernel sends SIGTERM once the bench is gone, however it
/// ended (even SIGKILLed, when [`interrupt`] never ran): through util-linux's `setpriv
/// --pdeathsig` (a child's own `prctl` would need `unsafe`), where it is installed. The child
/// keeps its pid (`setpriv` execs it). Children are started by the main thread only: the
/// signal follows the death of the thread that started them.
fn orphan_proof(program: &str) -> Command {
    static SETPRIV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let available = *SETPRIV.get_or_init(|| {
        Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    if available {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "TERM", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

/// Starts `args` with stdin closed, stderr to `log` and stdout discarded (or piped: the tools
/// print their JSON summary there).
pub fn start(args: &[String], log: &Path, pipe_stdout: bool) -> anyhow::Result<Proc> {
    let (program, rest) = args.split_first().context("no program")?;
    // Held while starting, so an interruption either sees this child or stops its start.
    let mut children = children();
    if interrupted() {
        bail!("interrupted");
    }
    let child = orphan_proof(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(File::create(log).with_context(|| format!("create {}", log.display()))?)
        .spawn()
        .with_context(|| format!("start {program}"))?;
    children.push(child.id());
    drop(children);
    Ok(Proc {
        child,
        log: log.to_path_buf(),
        name: Path::new(program)
            .file_name()
            .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned()),
        peak_mb: None,
    })
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit code if it has exited (it is reaped then).
    pub fn exited(&mut self) -> Option<i32> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(exit_code(status)),
            _ => None,
        }
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), signal);
    }

    /// SIGTERM, then waits (SIGKILL after `limit`).
    pub fn reap(mut self, limit: Duration) -> anyhow::Result<Exit> {
        self.note_peak();
        self.signal(Signal::SIGTERM);
        self.wait(limit)
    }

    /// Reads the peak RSS now (`VmHWM`; a process that has exited has none left to read).
    pub fn note_peak(&mut self) {
        if let Some(seen) = status_mb(self.pid(), "VmHWM:") {
            self.peak_mb = Some(self.peak_mb.map_or(seen, |p| p.max(seen)));
        }
    }

    /// Waits for the exit (SIGKILL after `limit`), sampling the peak RSS meanwhile.
    pub fn wait(mut self, limit: Duration) -> anyhow::Result<Exit> {
        let deadline = Instant::now() + limit;
        let mut killed = false;
        let pid = self.pid();
        loop {
            self.note_peak();
            let before = children_cpu_s()?;
            if let Some(status) = self.child.try_wait().context("wait")? {
                let cpu_s = children_cpu_s()? - before;
                children().retain(|&p| p != pid);
                return Ok(Exit {
                    code: exit_code(status),
                    cpu_s,
                    peak_rss_mb: self.peak_mb.unwrap_or(0.0),
                });
            }
            if !killed && Instant::now() > deadline {
                eprintln!(
                    "bench: {} (pid {pid}) did not exit in {limit:?}: SIGKILL",
                    self.name
                );
                self.signal(Signal::SIGKILL);
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a tool to its end: its stdout (one JSON summary), CPU seconds and peak RSS. A
    /// non-zero exit is an error with the tail of its log.
    pub fn finish(mut self, limit: Duration) -> anyhow::Result<(String, Exit)> {
        use std::io::Read;
        // Read stdout on a thread while [`Proc::wait`] samples the peak memory: a tool that is
        // done by the time its stdout ends would have no `VmHWM` left to read.
        let reader = self.child.stdout.take().map(|mut stdout| {
            std::thread::spawn(move || {
                let mut out = String::new();
                stdout.read_to_string(&mut out).map(|_| out)
            })
        });
        let log = self.log.clone();
        let name = self.name.clone();
        let exit = self.wait(limit)?;
        let out = match reader {
            Some(reader) => reader
                .join()
                .map_err(|_| anyhow::anyhow!("{name}: the stdout reader panicked"))?
                .context("read stdout")?,
            None => String::new(),
        };
        if exit.code != 0 {
            bail!(
                "{name} exited {}; log {}:\n{}",
                exit.code,
                log.display(),
                log_tail(&log)
            );
        }
        Ok((out, exit))
    }
}

/// The last 3,000 bytes or so of a log (the work directory holding it may be gone by the time
/// someone reads an error naming it).
pub fn log_tail(log: &Path) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let from = text.len().saturating_sub(3000);
    let from = (from..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(from);
    text[from..].to_owned()
}

/// A child left running (an error on the way) is killed.
impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let pid = self.child.id();
        children().retain(|&p| p != pid);
    }
}

/// A child's exit code, or minus the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or(status.signal().map(|s| -s)).unwrap_or(-1)
}

/// User + system CPU seconds of every child reaped so far.
fn children_cpu_s() -> anyhow::Result<f64> {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// The kernel's clock ticks per second of `/proc/*/stat` (USER_HZ).
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// User + system CPU seconds of a running process (all its threads).
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// A `/proc/PID/status` memory line (`VmRSS:`, `VmHWM:`) in MB.
fn status_mb(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Resident memory of a running process, in MB.
pub fn proc_rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmRSS:")
}

/// `[seconds, RSS MB of each pid]`, or None if one of them is gone or not running yet (under
/// 1 MB: between fork and exec).
pub fn rss_row(seconds: f64, pids: &[u32]) -> Option<Vec<f64>> {
    let mut row = vec![round(seconds, 2)];
    for &pid in pids {
        let mb = proc_rss_mb(pid).filter(|&mb| mb >= 1.0)?;
        row.push(round(mb, 1));
    }
    Some(row)
}

/// [`rss_row`] of some pids about once a second, on a thread of its own (for runs that block
/// on another process, such as a producer at a fixed rate).
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Vec<f64>>>>,
    pids: Vec<u32>,
    t0: Instant,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>, t0: Instant) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, sampled) = (stop.clone(), pids.clone());
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            'run: while !flag.load(Ordering::Relaxed) {
                samples.extend(rss_row(t0.elapsed().as_secs_f64(), &sampled));
                for _ in 0..10 {
                    if flag.load(Ordering::Relaxed) {
                        break 'run;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            samples
        });
        RssSampler {
            stop,
            thread: Some(thread),
            pids,
            t0,
        }
    }

    /// Stops sampling; the samples, with one taken now.
    pub fn stop(mut self) -> Vec<Vec<f64>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        samples.extend(rss_row(self.t0.elapsed().as_secs_f64(), &self.pids));
        samples
    }
}

/// A run that failed on its way stops the sampling too.
impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// About `points` of the samples, evenly spaced; the first and the last always kept.
pub fn downsample<T: Clone>(samples: &[T], points: usize) -> Vec<T> {
    let Some(last) = samples.last() else {
        return Vec::new();
    };
    let step = (samples.len() / points.max(1)).max(1);
    let mut kept: Vec<T> = samples.iter().step_by(step).cloned().collect();
    if !(samples.len() - 1).is_multiple_of(step) {
        kept.push(last.clone());
    }
    kept
}

/// (busy, total) seconds of the whole machine so far, from `/proc/stat`.
pub fn machine_cpu_s() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let values: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    let ticks = clock_ticks();
    Ok(((total - idle) as f64 / ticks, total as f64 / ticks))
}

/// The load averages (1, 5 and 15 minutes).
pub fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .map(|v| round(v, 2))
        .collect()
}

/// `value` rounded to `digits` decimals, ties to even (as the report's figures always were).
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round_ties_even() / scale
}

/// `value` rounded to a whole number, ties to even (0 for a negative or NaN value).
pub fn whole(value: f64) -> u64 {
    value.round_ties_even() as u64
}

/// The CPUs online on the machine (what `/proc/stat`'s busy time is summed over), not only
/// those this process may use.
pub fn cores() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsample_keeps_the_ends() {
        let samples: Vec<u32> = (0..10).collect();
        assert_eq!(downsample(&samples, 3), vec![0, 3, 6, 9]);
        assert_eq!(downsample(&samples, 4), vec![0, 2, 4, 6, 8, 9]);
        assert_eq!(downsample(&samples, 100), samples);
        assert!(downsample::<u32>(&[], 5).is_empty());
    }

    #[test]
    fn a_child_s_cpu_and_peak_memory_are_its_own() {
        let dir = std::env::temp_dir();
        // A shell that burns some CPU, then exits.
        let args = [
            "sh",
            "-c",
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
        ]
        .map(String::from);
        let proc = start(&args, &dir.join("bench-procs-test.log"), false).expect("start");
        let exit = proc.wait(Duration::from_secs(60)).expect("wait");
        assert_eq!(exit.code, 0);
        assert!(exit.cpu_s > 0.01, "{exit:?}");
        assert!(
            exit.peak_rss_mb > 0.5 && exit.peak_rss_mb < 100.0,
            "{exit:?}"
        );
    }
}
