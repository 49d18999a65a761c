//! The host collector: this node's own metrics every interval, from sysinfo (and /proc for the
//! process count, which sysinfo can only give by refreshing every process: 5 ms a tick).
//!
//! Metric names (the fixed, documented set; rates are per second over the last interval):
//! - `cpu_util`: busy fraction of all CPUs, 0..1
//! - `load_1`, `load_5`, `load_15`: load averages
//! - `mem_used_ratio`, `swap_used_ratio`: 0..1 (swap is 0 without swap)
//! - `mem_available_bytes`: memory available to new work (the mesh's capacity value reads it)
//! - `disk_used_ratio:<mount>` per mounted file system, and `disk_used_ratio_max` over them
//! - `disk_free_bytes_min`: the least free space of any mounted file system (capacity reads it;
//!   absent when no file system is listed)
//! - `disk_read_bps`, `disk_write_bps`: bytes per second over all block devices
//! - `net_rx_bps`, `net_tx_bps`: bytes per second over all interfaces (loopback excluded by default)
//! - `net_rx_errors_ps`, `net_tx_errors_ps`: interface errors per second
//! - `process_count`: processes on the host
//! - `agent_cpu_util`: the agent's own CPU as a fraction of one core; `agent_rss_bytes`: its RSS

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use augur_proto::{HOST_RESOURCE_TYPE, NodeName, ResourceId, ResourceType};
use parking_lot::Mutex;
use sysinfo::{
    DiskRefreshKind, Disks, Networks, Pid, ProcessRefreshKind, ProcessesToUpdate, System,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::Ingestor;
use crate::sample::{Sample, UnixMicros};
use crate::stats::Source;

/// The host metrics other parts of the agent read by name (the mesh's capacity value).
pub const CPU_UTIL: &str = "cpu_util";
pub const MEM_AVAILABLE_BYTES: &str = "mem_available_bytes";
pub const DISK_FREE_BYTES_MIN: &str = "disk_free_bytes_min";
/// Per-mount disk metrics: this prefix, then the mount point.
pub const DISK_USED_RATIO_PREFIX: &str = "disk_used_ratio:";

/// Every fixed metric name the host collector emits (per-mount disk metrics come in addition).
/// A test compares it with what a tick really emits, both ways.
pub const HOST_METRICS: &[&str] = &[
    CPU_UTIL,
    "load_1",
    "load_5",
    "load_15",
    "mem_used_ratio",
    MEM_AVAILABLE_BYTES,
    "swap_used_ratio",
    "disk_used_ratio_max",
    DISK_FREE_BYTES_MIN,
    "disk_read_bps",
    "disk_write_bps",
    "net_rx_bps",
    "net_tx_bps",
    "net_rx_errors_ps",
    "net_tx_errors_ps",
    "process_count",
    "agent_cpu_util",
    "agent_rss_bytes",
];

/// Ticks between re-listing disks and interfaces (mounts and NICs come and go).
const RELIST_EVERY: u64 = 60;

/// sysinfo state kept between ticks so that rates and CPU usage are deltas.
#[derive(Debug)]
pub struct HostCollector {
    sys: System,
    networks: Networks,
    disks: Disks,
    pid: Option<Pid>,
    include_loopback: bool,
    last: Instant,
    prev_net: HashMap<String, [u64; 4]>,
    prev_disk: HashMap<String, [u64; 2]>,
    ticks: u64,
}

impl HostCollector {
    pub fn new(include_loopback: bool) -> Result<Self, sysinfo::Error> {
        let mut sys = System::new()?;
        sys.refresh_cpu_usage();
        let networks = Networks::new_with_refreshed_list()?;
        let disks = Disks::new_with_refreshed_list_specifics(
            DiskRefreshKind::nothing().with_storage().with_io_usage(),
        )?;
        let pid = sysinfo::get_current_pid().ok();
        if let Some(pid) = pid {
            sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
        }
        let mut c = Self {
            sys,
            networks,
            disks,
            pid,
            include_loopback,
            last: Instant::now(),
            prev_net: HashMap::new(),
            prev_disk: HashMap::new(),
            ticks: 0,
        };
        c.prev_net = c.net_counters();
        c.prev_disk = c.disk_counters();
        Ok(c)
    }

    fn net_counters(&self) -> HashMap<String, [u64; 4]> {
        self.networks
            .iter()
            .filter(|(name, _)| self.include_loopback || name.as_os_str() != "lo")
            .map(|(name, n)| {
                (
                    name.to_string_lossy().into_owned(),
                    [
                        n.total_received(),
                        n.total_transmitted(),
                        n.total_errors_on_received(),
                        n.total_errors_on_transmitted(),
                    ],
                )
            })
            .collect()
    }

    fn disk_counters(&self) -> HashMap<String, [u64; 2]> {
        // Several mounts can share one device; count each device once.
        let mut out = HashMap::new();
        for d in self.disks.iter() {
            let u = d.usage();
            out.insert(
                d.name().to_string_lossy().into_owned(),
                [u.total_read_bytes, u.total_written_bytes],
            );
        }
        out
    }

    /// Takes one measurement. Rates are over the time since the previous call.
    pub fn tick(&mut self) -> BTreeMap<String, f64> {
        self.ticks += 1;
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64().max(1e-3);
        self.last = now;
        let mut m = BTreeMap::new();

        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        m.insert(
            CPU_UTIL.into(),
            (f64::from(self.sys.global_cpu_usage()) / 100.0).clamp(0.0, 1.0),
        );
        if let Ok(load) = System::load_average() {
            m.insert("load_1".into(), load.one);
            m.insert("load_5".into(), load.five);
            m.insert("load_15".into(), load.fifteen);
        }
        let total = self.sys.total_memory();
        if total > 0 {
            m.insert(
                "mem_used_ratio".into(),
                ratio(self.sys.used_memory(), total),
            );
            m.insert(
                MEM_AVAILABLE_BYTES.into(),
                self.sys.available_memory() as f64,
            );
        }
        let swap = self.sys.total_swap();
        m.insert(
            "swap_used_ratio".into(),
            if swap > 0 {
                ratio(self.sys.used_swap(), swap)
            } else {
                0.0
            },
        );

        let relist = self.ticks.is_multiple_of(RELIST_EVERY);
        self.disks.refresh_specifics(
            relist,
            DiskRefreshKind::nothing().with_storage().with_io_usage(),
        );
        let mut max_used: f64 = 0.0;
        let mut min_free: Option<u64> = None;
        for d in self.disks.iter() {
            let total = d.total_space();
            if total == 0 {
                continue;
            }
            min_free = Some(min_free.map_or(d.available_space(), |f| f.min(d.available_space())));
            let used = ratio(total.saturating_sub(d.available_space()), total);
            max_used = max_used.max(used);
            let name = format!("{DISK_USED_RATIO_PREFIX}{}", d.mount_point().display());
            if crate::accept::check_metric_name(&name).is_ok() {
                m.insert(name, used);
            }
        }
        m.insert("disk_used_ratio_max".into(), max_used);
        if let Some(f) = min_free {
            m.insert(DISK_FREE_BYTES_MIN.into(), f as f64);
        }
        let disk = self.disk_counters();
        let (r, w) = rate_sum(&self.prev_disk, &disk, dt);
        m.insert("disk_read_bps".into(), r[0]);
        m.insert("disk_write_bps".into(), w[0]);
        self.prev_disk = disk;

        self.networks.refresh(relist);
        let net = self.net_counters();
        let mut sums = [0.0f64; 4];
        for (name, now_c) in &net {
            if let Some(prev) = self.prev_net.get(name) {
                for i in 0..4 {
                    sums[i] += now_c[i].saturating_sub(prev[i]) as f64 / dt;
                }
            }
        }
        m.insert("net_rx_bps".into(), sums[0]);
        m.insert("net_tx_bps".into(), sums[1]);
        m.insert("net_rx_errors_ps".into(), sums[2]);
        m.insert("net_tx_errors_ps".into(), sums[3]);
        self.prev_net = net;

        if let Some(n) = process_count() {
            m.insert("process_count".into(), n as f64);
        }
        if let Some(pid) = self.pid {
            self.sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
            if let Some(p) = self.sys.process(pid) {
                m.insert("agent_cpu_util".into(), f64::from(p.cpu_usage()) / 100.0);
                m.insert("agent_rss_bytes".into(), p.memory() as f64);
            }
        }
        m
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    (part as f64 / whole as f64).clamp(0.0, 1.0)
}

/// Sums per-device deltas of two counters into rates.
fn rate_sum(
    prev: &HashMap<String, [u64; 2]>,
    now: &HashMap<String, [u64; 2]>,
    dt: f64,
) -> ([f64; 1], [f64; 1]) {
    let (mut r, mut w) = (0.0, 0.0);
    for (name, c) in now {
        if let Some(p) = prev.get(name) {
            r += c[0].saturating_sub(p[0]) as f64 / dt;
            w += c[1].saturating_sub(p[1]) as f64 / dt;
        }
    }
    ([r], [w])
}

#[cfg(target_os = "linux")]
fn process_count() -> Option<usize> {
    let dir = std::fs::read_dir("/proc").ok()?;
    Some(
        dir.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
            })
            .count(),
    )
}

#[cfg(not(target_os = "linux"))]
fn process_count() -> Option<usize> {
    None
}

/// Metrics other parts of the agent add to the host's sample (the mesh's peer round trips).
pub type ExtraMetrics = Arc<dyn Fn() -> Vec<(String, f64)> + Send + Sync>;

/// Runs the host collector until `shutdown`: one sample of the host resource per interval of the
/// `host` resource type (re-read on reload).
pub async fn run(
    node: NodeName,
    ingestor: Ingestor,
    mut config: watch::Receiver<Arc<Config>>,
    extra: Option<ExtraMetrics>,
    heartbeat: crate::systemd::Heartbeat,
    shutdown: CancellationToken,
) {
    let include_loopback = config.borrow().collect.include_loopback;
    let collector = match HostCollector::new(include_loopback) {
        Ok(c) => Arc::new(Mutex::new(c)),
        Err(e) => {
            ingestor.stats().collect_error("host");
            tracing::error!(error = %e, "host collector unavailable; host metrics will not be collected");
            return;
        }
    };
    let resource_id = ResourceId::parse(node.as_str()).expect("a node name is a valid resource id");
    let resource_type =
        ResourceType::parse(HOST_RESOURCE_TYPE).expect("'host' is a valid resource type");
    let mut period = config.borrow().interval_of(HOST_RESOURCE_TYPE);
    let mut ticker = interval(period);
    heartbeat.set_period(period);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Ok(()) = config.changed() => {
                let want = config.borrow().interval_of(HOST_RESOURCE_TYPE);
                if want != period {
                    period = want;
                    ticker = interval(period);
                    heartbeat.set_period(period);
                    tracing::info!(interval = ?period, "host collection interval changed");
                }
            }
            _ = ticker.tick() => {
                let c = collector.clone();
                let ts = UnixMicros::now();
                let metrics = match tokio::task::spawn_blocking(move || c.lock().tick()).await {
                    Ok(mut m) => {
                        heartbeat.beat();
                        if let Some(extra) = &extra {
                            m.extend(extra());
                        }
                        m
                    }
                    Err(e) => {
                        ingestor.stats().collect_error("host");
                        tracing::error!(error = %e, "host collector tick failed");
                        continue;
                    }
                };
                let sample = Sample {
                    ts,
                    resource_id: resource_id.clone(),
                    resource_type: resource_type.clone(),
                    metrics,
                    event: None,
                    labels: BTreeMap::new(),
                };
                if ingestor.admit(Source::Host, &sample).is_ok() {
                    ingestor.submit_nowait(Source::Host, vec![sample]);
                }
            }
        }
    }
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_yields_the_documented_metrics_in_range() {
        let mut c = HostCollector::new(false).expect("sysinfo works here");
        std::thread::sleep(Duration::from_millis(250)); // sysinfo ignores CPU refreshes within 200 ms
        let m = c.tick();
        // Both ways: every listed metric is emitted (disk_free_bytes_min needs a listed file
        // system), and every emitted one is listed (or is a per-mount disk metric).
        let mounts = m.keys().any(|k| k.starts_with(DISK_USED_RATIO_PREFIX));
        for name in HOST_METRICS {
            if cfg!(target_os = "linux") && (*name != DISK_FREE_BYTES_MIN || mounts) {
                assert!(m.contains_key(*name), "missing {name}: {m:?}");
            }
        }
        for name in m.keys() {
            assert!(
                HOST_METRICS.contains(&name.as_str()) || name.starts_with(DISK_USED_RATIO_PREFIX),
                "{name} is emitted but not in HOST_METRICS"
            );
        }
        for (name, v) in &m {
            assert!(v.is_finite(), "{name} = {v}");
            if name.ends_with("_ratio") || name.starts_with("disk_used_ratio") || name == "cpu_util"
            {
                assert!((0.0..=1.0).contains(v), "{name} = {v}");
            }
            assert!(crate::accept::check_metric_name(name).is_ok(), "{name}");
        }
        assert!(m["agent_rss_bytes"] > 0.0);
        assert!(m["process_count"] >= 1.0);
    }
}
