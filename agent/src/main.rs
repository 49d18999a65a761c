//! `augur`: the agent binary. Parses the command line and hands over; everything else is the library.

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

use augur_agent::cli::{Cli, Command};
use augur_agent::config::Config;

/// `augur ... | head` closes stdout early; that ends the command quietly, as it does for other
/// Unix tools, instead of a panic report (Rust ignores SIGPIPE, so the write fails instead).
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> std::process::ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("augur: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Agent(args) => {
                let sources = args.sources();
                let cfg = Config::load(&sources)?;
                let log_reload = augur_agent::logging::init(cfg.log.format, &cfg.log.level);
                augur_agent::agent::run(cfg, sources, Some(log_reload), CancellationToken::new())
                    .await
            }
            other => augur_agent::cli::run_client(other).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("augur: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
