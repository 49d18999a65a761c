//! Scraping workloads' Prometheus text endpoints: each target is fetched at its interval and its
//! series become the metrics of one sample of the target's resource.
//!
//! The exposition parser is written here rather than taken from a crate: the format is small, and
//! what augur needs (series keyed `name{labels}`, NaN samples skipped, bad lines skipped and
//! counted rather than failing the scrape) differs from what general parsers return.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use regex::RegexSet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{RejectReason, Rejection};
use crate::config::{Config, ScrapeConfig};
use crate::ingest::Ingestor;
use crate::sample::{Sample, UnixMicros};
use crate::stats::Source;

/// Result of parsing one exposition.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    /// Series key (`name` or `name{labels}`) to value.
    pub series: BTreeMap<String, f64>,
    /// Lines that could not be parsed.
    pub bad_lines: usize,
    /// Samples skipped because their value was NaN or infinite.
    pub non_finite: usize,
}

/// Parses the Prometheus text exposition format (0.0.4; OpenMetrics text is a superset of what is
/// read here). Timestamps are ignored: the scrape time is the sample time.
pub fn parse_exposition(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some((key, v)) if v.is_finite() => {
                out.series.insert(key, v);
            }
            Some(_) => out.non_finite += 1,
            None => out.bad_lines += 1,
        }
    }
    out
}

fn parse_line(line: &str) -> Option<(String, f64)> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_alphanumeric() || c == '_' || c == ':') || (i == 0 && c.is_ascii_digit())
        })
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return None;
    }
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut key = name.to_owned();
    if rest.starts_with('{') {
        // Find the closing brace outside quotes.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in rest.char_indices().skip(1) {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let close = close?;
        let labels = &rest[1..close];
        if !labels.trim().is_empty() {
            key.push('{');
            // Whitespace is not allowed in augur metric names; label values keep their meaning.
            key.extend(
                labels
                    .chars()
                    .map(|c| if c.is_whitespace() { '_' } else { c }),
            );
            key.push('}');
        }
        rest = &rest[close + 1..];
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    Some((key, value))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// Builds the sample of one scrape, applying the include filter and the metric limit.
pub fn to_sample(
    target: &ScrapeConfig,
    include: Option<&RegexSet>,
    parsed: Parsed,
    ts: UnixMicros,
    max_metrics: usize,
) -> Result<Sample, Rejection> {
    let mut metrics: BTreeMap<String, f64> = parsed
        .series
        .into_iter()
        .filter(|(k, _)| include.is_none_or(|set| set.is_match(k)))
        .filter(|(k, _)| crate::accept::check_metric_name(k).is_ok())
        .collect();
    // Prometheus's `_ratio` convention matches augur's, but not every exporter keeps it.
    metrics.retain(|k, v| {
        let is_ratio = k.split('{').next().is_some_and(|n| n.ends_with("_ratio"));
        !is_ratio || (0.0..=1.0).contains(v)
    });
    if metrics.len() > max_metrics {
        return Err(Rejection::new(
            RejectReason::TooManyMetrics,
            format!(
                "{} exposes {} series; the limit is {}: set `include` on this scrape target to keep the ones that matter",
                target.url,
                metrics.len(),
                max_metrics
            ),
        ));
    }
    if metrics.is_empty() {
        return Err(Rejection::new(
            RejectReason::Empty,
            format!("{} exposed no usable series", target.url),
        ));
    }
    Ok(Sample {
        ts,
        resource_id: target.resource_id.clone(),
        resource_type: target.resource_type.clone(),
        metrics,
        event: None,
        labels: BTreeMap::new(),
    })
}

/// Runs every configured target until `shutdown`; a reload restarts the set.
pub async fn run(
    ingestor: Ingestor,
    mut config: watch::Receiver<Arc<Config>>,
    shutdown: CancellationToken,
) {
    let client = match crate::net::http_client(None) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; scraping is off");
            return;
        }
    };
    loop {
        let cfg = config.borrow_and_update().clone();
        let round = shutdown.child_token();
        let tasks = TaskTracker::new();
        for target in cfg.scrape.clone() {
            let interval = target
                .interval
                .unwrap_or_else(|| cfg.interval_of(target.resource_type.as_str()));
            tasks.spawn(scrape_target(
                target,
                interval,
                client.clone(),
                ingestor.clone(),
                round.clone(),
            ));
        }
        tasks.close();
        tokio::select! {
            () = shutdown.cancelled() => {
                tasks.wait().await;
                return;
            }
            changed = config.changed() => {
                round.cancel();
                tasks.wait().await;
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn scrape_target(
    target: ScrapeConfig,
    interval: Duration,
    client: reqwest::Client,
    ingestor: Ingestor,
    shutdown: CancellationToken,
) {
    let include = if target.include.is_empty() {
        None
    } else {
        match RegexSet::new(&target.include) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(url = %target.url, error = %e, "invalid include pattern; target skipped");
                return;
            }
        }
    };
    let timeout = target
        .timeout
        .unwrap_or_else(|| interval.min(Duration::from_secs(5)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut healthy = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ts = UnixMicros::now();
        let body = async {
            let resp = client.get(&target.url).timeout(timeout).send().await?;
            resp.error_for_status()?.text().await
        };
        let text = match body.await {
            Ok(t) => t,
            Err(e) => {
                ingestor.stats().scrape_error(&target.url);
                if healthy {
                    tracing::warn!(url = %target.url, error = %e, "scrape failed");
                }
                healthy = false;
                continue;
            }
        };
        if !healthy {
            tracing::info!(url = %target.url, "scrape recovered");
            healthy = true;
        }
        let parsed = parse_exposition(&text);
        for _ in 0..parsed.non_finite {
            ingestor
                .stats()
                .rejected(Source::Scrape, RejectReason::NonFinite);
        }
        for _ in 0..parsed.bad_lines {
            ingestor
                .stats()
                .rejected(Source::Scrape, RejectReason::MalformedJson);
        }
        let limits = ingestor.limits();
        match to_sample(&target, include.as_ref(), parsed, ts, limits.max_metrics) {
            Ok(sample) => {
                if ingestor.admit(Source::Scrape, &sample).is_ok() {
                    ingestor.submit_nowait(Source::Scrape, vec![sample]);
                }
            }
            Err(r) => {
                ingestor.reject(Source::Scrape, &r);
                tracing::warn!(url = %target.url, rejection = %r, "scrape refused");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use augur_proto::{ResourceId, ResourceType};

    use super::*;

    const TEXT: &str = r#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="get", path="/a b"} 3
queue_len 14
up{} 1
summary_quantile{quantile="0.5"} NaN
histogram_bucket{le="+Inf"} 9
weird line without value
{no_name="x"} 1
"#;

    #[test]
    fn parses_series_with_labels_and_skips_the_bad() {
        let p = parse_exposition(TEXT);
        assert_eq!(
            p.series[r#"http_requests_total{method="post",code="200"}"#],
            1027.0
        );
        assert_eq!(
            p.series[r#"http_requests_total{method="get",_path="/a_b"}"#],
            3.0
        );
        assert_eq!(p.series["queue_len"], 14.0);
        assert_eq!(p.series["up"], 1.0);
        assert_eq!(p.series[r#"histogram_bucket{le="+Inf"}"#], 9.0);
        assert_eq!(p.non_finite, 1);
        assert_eq!(p.bad_lines, 2);
    }

    fn target() -> ScrapeConfig {
        ScrapeConfig {
            url: "http://127.0.0.1:1/metrics".into(),
            resource_id: ResourceId::parse("web-1").expect("id"),
            resource_type: ResourceType::parse("service").expect("type"),
            interval: None,
            timeout: None,
            include: vec![],
        }
    }

    #[test]
    fn include_filter_and_limit() {
        let set = RegexSet::new(["^queue_"]).expect("regex");
        let s = to_sample(
            &target(),
            Some(&set),
            parse_exposition(TEXT),
            UnixMicros(1),
            256,
        )
        .expect("sample");
        assert_eq!(s.metrics.keys().collect::<Vec<_>>(), vec!["queue_len"]);
        let err = to_sample(&target(), None, parse_exposition(TEXT), UnixMicros(1), 2)
            .expect_err("too many");
        assert_eq!(err.reason, RejectReason::TooManyMetrics);
        assert!(err.message.contains("include"));
    }
}
