//! `augur-bench dashboard`: what a browser following the dashboard costs the agent serving it.
//! A fleet of real agents on loopback (host collection on, as installed); one node's CPU is
//! measured in turns with no browser, with headless Chromium on the fleet view, and with it on
//! the node's own host resource (forecast, scores and series refreshed every few seconds). The
//! turns alternate for several rounds, so drift in the machine's load falls on every phase alike;
//! medians are reported, and each browser phase's cost over the no-browser one.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{LocalFleet, proc_usage};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    pub nodes: usize,
    /// Seconds per measurement.
    pub secs: u64,
    pub rounds: usize,
}

/// The phases, in the order each round runs them.
const PHASES: [&str; 3] = ["no browser", "fleet view", "resource view"];

/// Headless Chromium on `url` until dropped (its whole process group is killed).
struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(chromium: &Path, url: &str) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let child = tokio::process::Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,1400",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("chromium starts")?;
        Ok(Browser {
            child,
            _profile: profile,
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the measurement; `tick` is called once per measured second (progress).
pub async fn run(s: &Settings, mut tick: impl FnMut(&str)) -> anyhow::Result<Value> {
    let (chromium, _) = crate::browser_bins()
        .context("chromium is needed: apt-get install chromium chromium-driver")?;
    let mut fleet = LocalFleet::new()?;
    // As installed: host metrics collected every second.
    fleet.config = String::new();
    let names: Vec<String> = (1..=s.nodes).map(|i| format!("n{i}")).collect();
    for n in &names {
        tick(&format!("starting {n}"));
        fleet.start(n).await?;
    }
    for n in &names {
        fleet
            .until_all_see(n, "alive", Duration::from_secs(60))
            .await?;
    }
    let agent = &fleet.agents["n1"];
    let pid = agent.pid;
    let base = agent.url("");
    // The node's own host resource, once it is predicted.
    let host = crate::eventually("n1's host resource predicted", || async {
        let v = agent.get_json("/v1/predictions").await.ok()?;
        v["predictions"]
            .as_array()?
            .iter()
            .find(|p| p["resource_type"] == "host")
            .and_then(|p| p["resource_id"].as_str().map(str::to_owned))
    })
    .await?;
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    let mut connections: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    for round in 0..s.rounds {
        for (i, phase) in PHASES.iter().enumerate() {
            let browser = match i {
                0 => None,
                1 => Some(Browser::open(&chromium, &format!("{base}/ui/#/fleet"))?),
                _ => Some(Browser::open(
                    &chromium,
                    &format!("{base}/ui/#/resource/{host}"),
                )?),
            };
            // The page loads and settles (its first fetches are not the steady cost).
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (c0, _) = proc_usage(pid)?;
            let t0 = Instant::now();
            for _ in 0..s.secs {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tick(&format!("round {}/{}: {phase}", round + 1, s.rounds));
            }
            let (c1, _) = proc_usage(pid)?;
            cpu[i].push(100.0 * (c1 - c0) / t0.elapsed().as_secs_f64());
            // The browser really follows the page: its event stream is open (this request's
            // own connection is the other one counted).
            let open = crate::metric(
                &agent.get_text("/metrics").await?,
                "augur_api_connections{listener=\"http\"}",
            );
            anyhow::ensure!(
                (open >= 2.0) == browser.is_some(),
                "{phase}: {open} HTTP connections open on n1; the browser did not load the page as expected"
            );
            connections[i].push(open);
            drop(browser);
        }
    }
    let medians: Vec<f64> = cpu.iter().map(|v| median(v.clone())).collect();
    let phases: Vec<Value> = PHASES
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "phase": p,
                "cpu_percent_of_one_core": cpu[i],
                "median": medians[i],
                "cost_over_no_browser": medians[i] - medians[0],
                "http_connections_open_at_end": connections[i],
            })
        })
        .collect();
    Ok(json!({
        "nodes": s.nodes,
        "seconds_per_measurement": s.secs,
        "rounds": s.rounds,
        "resource": host,
        "phases": phases,
    }))
}
