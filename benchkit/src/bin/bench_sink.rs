//! `bench-sink`: the sink benchmark (see `clickstream_benchkit::bench`). `scripts/bench` builds
//! the release binaries and runs it.
//!
//!     bench-sink            # the whole run on a private local stack
//!     bench-sink --report   # only re-render the charts and the report from the results file
//!     bench-sink --soak     # the soak (scripts/soak); `--soak --report` re-renders its section
//!     bench-sink --help     # the BENCH_* settings

use clickstream_benchkit::bench::{self, STACK_VARIABLES, Settings, VARIABLES};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => {
            let outcome = bench::run(&Settings::from_env()?);
            if bench::procs::interrupted() {
                eprintln!("bench: interrupted");
                std::process::exit(130);
            }
            outcome
        }
        ["--report"] => bench::rerender(&Settings::from_env()?),
        ["--soak"] => {
            let outcome = bench::soak_run(&Settings::from_env()?);
            if bench::procs::interrupted() {
                eprintln!("bench: interrupted");
                std::process::exit(130);
            }
            if !outcome? {
                eprintln!(
                    "soak: FAILED its checks: see the soak section of the report and the results \
                     file (BENCH_KEEP_WORK=1 keeps the processes' logs)"
                );
                std::process::exit(1);
            }
            Ok(())
        }
        ["--soak", "--report"] => bench::rerender_soak(&Settings::from_env()?),
        ["--help" | "-h"] => {
            // Written, not printed: `--help | head` must not panic on the closed pipe.
            use std::io::Write;
            let mut help = String::from(
                "Usage: scripts/bench [--report] | scripts/soak [--report]\n\nSettings (environment):\n",
            );
            for (name, default, text) in VARIABLES {
                help += &format!("  {name:<18} {text} (default: {default})\n");
            }
            for (name, default) in STACK_VARIABLES {
                help += &format!("  {name:<26} the private stack's (default: {default})\n");
            }
            let _ = std::io::stdout().lock().write_all(help.as_bytes());
            Ok(())
        }
        _ => anyhow::bail!("unknown arguments {args:?}: try --help"),
    }
}
