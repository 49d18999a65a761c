//! Logs through tracing: human-readable by default, JSON lines with `--log-format json`. The level
//! filter can be changed at run time (SIGHUP); RUST_LOG, when set, wins over the configuration.

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogFormat;

/// Changes the level filter of the installed subscriber.
#[derive(Clone, Debug)]
pub struct LogReload {
    handle: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

impl LogReload {
    pub fn set_level(&self, level: &str) {
        if self.from_env {
            tracing::info!("RUST_LOG is set; log.level change ignored");
            return;
        }
        match EnvFilter::try_new(level) {
            Ok(f) => {
                if self.handle.reload(f).is_ok() {
                    tracing::info!(level, "log level changed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "invalid log.level"),
        }
    }
}

/// Installs the global subscriber, writing to stderr.
pub fn init(format: LogFormat, level: &str) -> LogReload {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = if from_env {
        EnvFilter::from_default_env()
    } else {
        EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    LogReload { handle, from_env }
}
