//! `augur-bench migrate`: real agents on loopback, each a lease voter, one `augur-echo` replica
//! under 500 requests/s through every node's proxy, moved again and again with each strategy.
//! Reports, per strategy, the time from request to completed migration (from its journal),
//! the lease's acquisition latency (the journal's "asked" to "granted"), the requests failed, and
//! the lease traffic of the coordinator per migration (messages and CBOR bytes, acquisition,
//! renewals and release together) and per lease round; then the acquisition latency with more
//! voters (live moves only).

use std::time::Duration;

use serde_json::{Value, json};

use crate::migration_fleet::{NODES, failed, fronts, migrate, one_serving, setup_nodes};

/// What to run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub runs: usize,
    pub strategies: Vec<String>,
    /// Fleet sizes (every node a voter) for the live-only lease pass.
    pub voters: Vec<usize>,
}

fn ms(d: &Value) -> Option<f64> {
    humantime::parse_duration(d.as_str()?)
        .ok()
        .map(|d| d.as_secs_f64() * 1000.0)
}

/// Median and p99 (nearest rank) of `v`.
fn summary(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    json!({"median": at(0.5), "p99": at(0.99), "runs": v.len(), "all": v})
}

async fn counter(fleet: &crate::LocalFleet, node: &str, name: &str) -> f64 {
    let text = fleet.agents[node]
        .get_text("/metrics")
        .await
        .unwrap_or_default();
    crate::metric(&text, name)
}

/// Moves the service `runs` times with `strategy` on a fleet of `nodes`, under load.
async fn pass(
    nodes: &[&str],
    strategy: &str,
    runs: usize,
    progress: &impl Fn(&str),
) -> anyhow::Result<Value> {
    let standbys = u32::from(strategy == "warm_standby");
    let mut s = setup_nodes(nodes, strategy, standbys, 0, false).await;
    let coordinator = nodes[0];
    // The load starts once every proxy routes the service (before, connections are refused).
    one_serving(&s.fleet, "one serving instance").await;
    let load = crate::Load::start(fronts(&mut s, &nodes[..nodes.len().min(3)]), 500);
    let mut took = Vec::new();
    let mut lease = Vec::new();
    let t0 = std::time::Instant::now();
    let mut moves_at = Vec::new();
    let (mut messages, mut bytes, mut rounds) = (0.0, 0.0, 0.0);
    for run in 0..runs {
        progress(&format!(
            "{strategy}, {} voters: move {}/{runs}",
            nodes.len(),
            run + 1
        ));
        let (_, from, _) = one_serving(&s.fleet, "one serving instance").await;
        if strategy == "warm_standby" {
            crate::eventually("a healthy standby", || async {
                crate::migration_fleet::instances(&s.fleet)
                    .await
                    .into_iter()
                    .find(|i| i.4 == "standby" && i.3 == "healthy")
            })
            .await?;
        }
        let before = (
            counter(&s.fleet, coordinator, "augur_lease_messages").await,
            counter(&s.fleet, coordinator, "augur_lease_bytes").await,
            counter(&s.fleet, coordinator, "augur_leases_renewed").await,
        );
        let mut args = vec!["--strategy", strategy, "--from", from.as_str()];
        if strategy == "blue_green" {
            args.extend(["--soak", "2s", "--window", "3s"]);
        }
        moves_at.push(t0.elapsed().as_secs_f64());
        let j = migrate(&s, coordinator, &args).await?;
        let log = j["record"]["log"].as_array().cloned().unwrap_or_default();
        let at = |step: &str, note: &str| {
            log.iter()
                .find(|l| {
                    l["step"] == step && l["note"].as_str().is_some_and(|n| n.starts_with(note))
                })
                .and_then(|l| ms(&l["at"]))
        };
        if let Some(t) = at("finished", "") {
            took.push(t);
        }
        if let (Some(a), Some(g)) = (at("lease", "asked"), at("lease", "granted")) {
            lease.push(g - a);
        }
        let after = (
            counter(&s.fleet, coordinator, "augur_lease_messages").await,
            counter(&s.fleet, coordinator, "augur_lease_bytes").await,
            counter(&s.fleet, coordinator, "augur_leases_renewed").await,
        );
        messages += after.0 - before.0;
        bytes += after.1 - before.1;
        rounds += 1.0 + (after.2 - before.2);
        // The service's hold-down (1 s) before the next move.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let outcomes = load.finish().await;
    let failures = failed(&outcomes);
    // When requests failed (seconds since the pass started) and what they said, beside when each
    // move was asked for: where to look when some do.
    let failed_at: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| (o.started.saturating_duration_since(t0).as_secs_f64() * 10.0).round() / 10.0)
        .collect();
    let voters = nodes.len() as f64;
    let n = runs.max(1) as f64;
    Ok(json!({
        "voters": nodes.len(),
        "request_to_completed_ms": summary(took),
        "lease_acquisition_ms": summary(lease),
        "requests": outcomes.len(),
        "requests_failed": failures.len(),
        "moves_asked_at_s": moves_at,
        "failed_at_s": failed_at,
        "failures_sample": failures.iter().take(3).collect::<Vec<_>>(),
        "lease_messages_per_migration": messages / n,
        "lease_bytes_per_migration": bytes / n,
        // A release is one request and one reply per voter; the rest are lease rounds
        // (acquisition and renewals), each a prepare and a proposal to every voter.
        "lease_messages_per_round": (messages - 2.0 * voters * n) / rounds.max(1.0),
        "lease_bytes_per_round_approx": bytes / rounds.max(1.0),
    }))
}

pub async fn run(s: &Settings, progress: impl Fn(&str)) -> anyhow::Result<Value> {
    let mut strategies = serde_json::Map::new();
    for strategy in &s.strategies {
        strategies.insert(
            strategy.clone(),
            pass(&NODES, strategy, s.runs, &progress).await?,
        );
    }
    let mut voters = serde_json::Map::new();
    for &v in s.voters.iter().filter(|v| **v > 0) {
        let names: Vec<String> = (1..=v).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        voters.insert(v.to_string(), pass(&refs, "live", s.runs, &progress).await?);
    }
    Ok(json!({
        "load_rps": 500,
        "health_check": "HTTP /healthz every 200 ms, 1 success, 2 failures",
        "timeouts": "propagate 3 s, drain 2 s; blue_green soak 2 s, window 3 s",
        "lease": "6 s, renewed at half-time; hold-down 1 s",
        "strategies": strategies,
        "voters": voters,
    }))
}
