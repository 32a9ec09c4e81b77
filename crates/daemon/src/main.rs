//! `openclaw-egressd`: keeps the egress allowlist enforced.
//!
//! Runs in the foreground (systemd or launchd supervise it). Validates the
//! config first and exits non-zero with every error; then loads the table
//! (closed from the first moment), resolves every hostname, and from then on
//! re-resolves each one when its TTL runs out, applies allowlist edits live,
//! restores the table when someone else changes it, and answers `status` on
//! its control socket.

mod args;
mod control;
mod docker;
mod engine;
mod watch;

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;

use args::Cli;
use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// True when stderr is the journal (systemd sets JOURNAL_STREAM to the
/// device and inode of the stream it connected).
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    // fstat of a duplicate of stderr; MetadataExt gives u64 on every Unix.
    let Ok(meta) = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
    else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

fn init_logging(level: &str) {
    // hickory logs every packet at debug; keep it at warn unless RUST_LOG
    // asks for it explicitly.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            EnvFilter::try_new(format!(
                "{level},hickory_net=warn,hickory_resolver=warn,hickory_proto=warn,mnl=warn,nftnl=warn"
            ))
        })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(j) => {
                registry
                    .with(j.with_syslog_identifier("openclaw-egressd".into()))
                    .init();
                return;
            }
            Err(e) => eprintln!("openclaw-egressd: journald unavailable ({e}); logging to stderr"),
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}

fn main() -> ExitCode {
    #[cfg(debug_assertions)]
    if let Some(code) = egress_firewall::sim::fake_program() {
        return code;
    }
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let (loaded, warnings) = match engine::load(&cli.config) {
        Ok(l) => l,
        Err(msgs) => {
            for m in msgs {
                eprintln!("{m}");
            }
            return ExitCode::FAILURE;
        }
    };
    for w in warnings {
        eprintln!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("openclaw-egressd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = engine::Opts {
        config_path: cli.config,
        flush_on_exit: cli.flush_on_exit,
    };
    match rt.block_on(engine::run(opts, loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("openclaw-egressd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_config_path_is_the_cores() {
        assert_eq!(
            super::args::DEFAULT_CONFIG,
            egress_core::config::DEFAULT_CONFIG_PATH
        );
    }
}
