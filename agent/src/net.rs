//! Outbound HTTP: the one client builder, for the CLI's calls to an agent and the scrape
//! collector's to its targets (no system proxy: both talk to local or fleet-internal addresses).

use std::time::Duration;

/// An HTTP client that ignores proxy settings; `timeout` bounds each whole request when given.
pub fn http_client(timeout: Option<Duration>) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder().no_proxy();
    match timeout {
        Some(t) => builder.timeout(t),
        None => builder,
    }
    .build()
}
