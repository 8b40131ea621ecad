//! `clickstream-producer`: parses the flags, installs tracing (stderr), runs until done or
//! Ctrl-C / SIGTERM, prints the JSON summary on stdout. Exit code 1 if any message was not
//! delivered, 2 for bad flags.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use clickstream_producer::settings::Args;
use clickstream_producer::{Error, Summary, run};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let unknown = clickstream_producer::settings::unknown_variables(
        std::env::vars_os().filter_map(|(k, _)| Some((k.into_string().ok()?, String::new()))),
    );
    if !unknown.is_empty() {
        Args::command()
            .error(
                clap::error::ErrorKind::UnknownArgument,
                format!(
                    "{} set, but no flag reads it (a typo? -X properties cannot come from the \
                     environment): see --help",
                    unknown.join(", ")
                ),
            )
            .exit()
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let settings = args.into_settings(rand::random).unwrap_or_else(|error| {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, error)
            .exit()
    });

    match run(settings, shutdown_signal()).await {
        Ok(summary) => {
            print_summary(&summary)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Undelivered { summary }) => {
            print_summary(&summary)?;
            tracing::error!("{}", Error::Undelivered { summary });
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(anyhow::Error::new(error).context("clickstream-producer failed")),
    }
}

fn print_summary(summary: &Summary) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(summary)?);
    Ok(())
}

/// Completes at the first Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested: stopping, then flushing");
}
