//! Talking to systemd (`Type=notify`): `READY=1` once the listeners are bound and the history is
//! open, `STOPPING=1` when shutdown begins, and `WATCHDOG=1` at half of `WATCHDOG_USEC`, sent only
//! while the agent's work goes on: no task ended unexpectedly, and every task that must keep
//! beating (the history writer, the host collector) has beaten recently. A wedged writer or
//! collector therefore stops the pings, and systemd restarts the agent (`WatchdogSec=` in the
//! unit). Without `NOTIFY_SOCKET` (not started by systemd) nothing is sent; without
//! `WATCHDOG_USEC` there is no watchdog task.
//!
//! The decision ([`Liveness::verdict`]) takes the time as an argument and does no I/O; the task
//! around it only ticks and sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use augur_mesh::tasks::TaskHealth;
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Tasks that must keep beating, and when each last did.
#[derive(Clone, Debug)]
pub struct Liveness {
    base: Instant,
    beats: Arc<Mutex<Vec<Heartbeat>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

/// One task's beat: cheap to clone, and to call on every loop of the task.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    name: &'static str,
    base: Instant,
    /// Milliseconds after `base` of the last beat.
    last_ms: Arc<AtomicU64>,
    /// How often the task beats when all is well (milliseconds); it may change (a new collection
    /// interval on reload).
    period_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// The task did its work (or waited for work, as it should) just now.
    pub fn beat(&self) {
        self.last_ms
            .store(ms_since(self.base, Instant::now()), Ordering::Relaxed);
    }

    /// The task now beats this often.
    pub fn set_period(&self, period: Duration) {
        self.period_ms
            .store(period.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

fn ms_since(base: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(base).as_millis() as u64
}

/// Why the watchdog is not pinged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Withheld {
    /// A task ended while the agent was not stopping (`/healthz` lists it).
    TaskEnded { total: u64 },
    /// These tasks have not beaten for longer than they may.
    Stale(Vec<(&'static str, Duration)>),
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TaskEnded { total } => write!(
                f,
                "{total} task(s) ended unexpectedly (see /healthz); systemd will restart the agent"
            ),
            Self::Stale(v) => {
                let names: Vec<String> = v
                    .iter()
                    .map(|(n, age)| format!("{n} silent for {age:?}"))
                    .collect();
                write!(
                    f,
                    "wedged: {}; systemd will restart the agent",
                    names.join(", ")
                )
            }
        }
    }
}

impl Liveness {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            beats: Arc::default(),
        }
    }

    /// A heartbeat for the task `name`, which beats about every `period`; it counts as beating now.
    pub fn register(&self, name: &'static str, period: Duration) -> Heartbeat {
        let h = Heartbeat {
            name,
            base: self.base,
            last_ms: Arc::new(AtomicU64::new(ms_since(self.base, Instant::now()))),
            period_ms: Arc::new(AtomicU64::new(period.as_millis() as u64)),
        };
        self.beats.lock().push(h.clone());
        h
    }

    /// Whether the agent is alive at `now`, for a watchdog of `timeout`: no task ended
    /// unexpectedly (`ended_total`), and every heartbeat is younger than the longer of `timeout`
    /// and three of its periods (a slow collection interval is not a wedge).
    pub fn verdict(
        &self,
        now: Instant,
        ended_total: u64,
        timeout: Duration,
    ) -> Result<(), Withheld> {
        if ended_total > 0 {
            return Err(Withheld::TaskEnded { total: ended_total });
        }
        let now_ms = ms_since(self.base, now);
        let stale: Vec<(&'static str, Duration)> = self
            .beats
            .lock()
            .iter()
            .filter_map(|h| {
                let age = now_ms.saturating_sub(h.last_ms.load(Ordering::Relaxed));
                let allowed =
                    (timeout.as_millis() as u64).max(3 * h.period_ms.load(Ordering::Relaxed));
                (age > allowed).then(|| (h.name, Duration::from_millis(age)))
            })
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(Withheld::Stale(stale))
        }
    }
}

/// Tells systemd the agent is ready (a no-op without `NOTIFY_SOCKET`).
pub fn ready(status: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tells systemd the agent is stopping.
pub fn stopping() {
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping"),
    ]);
}

/// Tells systemd the agent is reloading its configuration, then that it is done.
pub fn reloading() -> Option<ReloadDone> {
    let now = sd_notify::NotifyState::monotonic_usec_now().ok()?;
    send(&[sd_notify::NotifyState::Reloading, now]);
    Some(ReloadDone)
}

/// Sends `READY=1` when dropped: the end of a reload.
#[derive(Debug)]
pub struct ReloadDone;

impl Drop for ReloadDone {
    fn drop(&mut self) {
        send(&[sd_notify::NotifyState::Ready]);
    }
}

fn send(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// The watchdog timeout systemd asked for (`WATCHDOG_USEC`, for this process's `WATCHDOG_PID`).
pub fn watchdog_timeout() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Sends `WATCHDOG=1` to systemd.
pub fn ping() {
    send(&[sd_notify::NotifyState::Watchdog]);
}

/// Calls `ping` (systemd's: [`ping`]) every half `timeout` while [`Liveness::verdict`] holds;
/// stops at `stop`. A withheld ping is logged once when it starts being withheld, and once when
/// pings resume.
pub async fn watchdog(
    liveness: Liveness,
    health: Arc<TaskHealth>,
    timeout: Duration,
    stop: CancellationToken,
    mut ping: impl FnMut() + Send,
) {
    let mut tick = tokio::time::interval(timeout / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match liveness.verdict(Instant::now(), health.ended_total(), timeout) {
            Ok(()) => {
                if withheld {
                    tracing::warn!("agent alive again; systemd watchdog pings resumed");
                    withheld = false;
                }
                ping();
            }
            Err(why) => {
                if !withheld {
                    tracing::error!(reason = %why, "systemd watchdog pings withheld");
                    withheld = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_verdict_follows_ended_tasks_and_silent_heartbeats() {
        let l = Liveness::new();
        let writer = l.register("history.writer", Duration::from_secs(1));
        let collector = l.register("collect.host", Duration::from_secs(1));
        let timeout = Duration::from_secs(10);
        assert_eq!(l.verdict(Instant::now(), 0, timeout), Ok(()));
        assert_eq!(
            l.verdict(Instant::now(), 1, timeout),
            Err(Withheld::TaskEnded { total: 1 })
        );
        // Both beat for 20 s: alive throughout.
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            writer.beat();
            collector.beat();
            assert_eq!(l.verdict(Instant::now(), 0, timeout), Ok(()));
        }
        // The writer wedges: alive until it has been silent for the timeout, then not.
        for s in 1..=12u64 {
            tokio::time::advance(Duration::from_secs(1)).await;
            collector.beat();
            let v = l.verdict(Instant::now(), 0, timeout);
            if s <= 10 {
                assert_eq!(v, Ok(()), "{s} s");
            } else {
                assert_eq!(
                    v,
                    Err(Withheld::Stale(vec![(
                        "history.writer",
                        Duration::from_secs(s)
                    )])),
                    "{s} s"
                );
            }
        }
        writer.beat();
        assert_eq!(l.verdict(Instant::now(), 0, timeout), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_stop_when_a_task_wedges_and_when_one_ends() {
        use std::sync::atomic::AtomicUsize;
        let l = Liveness::new();
        let writer = l.register("history.writer", Duration::from_secs(1));
        let health = Arc::new(TaskHealth::default());
        let pings = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let p = pings.clone();
        let task = tokio::spawn(watchdog(
            l.clone(),
            health.clone(),
            Duration::from_secs(10),
            stop.clone(),
            move || {
                p.fetch_add(1, Ordering::Relaxed);
            },
        ));
        let count = || pings.load(Ordering::Relaxed);
        // The writer beats every second for a minute: a ping every 5 s (the first at once).
        for _ in 0..60 {
            writer.beat();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(count(), 12);
        // It wedges: pings go on while it has been silent for up to the timeout, then stop.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(count(), 14, "pings at 60 s and 65 s; none after 70 s");
        // It beats again: pings resume.
        for _ in 0..20 {
            writer.beat();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(count(), 18);
        // A task ends unexpectedly: no more pings, whatever beats.
        let group = augur_mesh::Tasks::default();
        let h = group.health().clone();
        group.spawn("collect.logs", async {}).await.expect("joins");
        assert_eq!(h.ended_total(), 1);
        let task2_pings = Arc::new(AtomicUsize::new(0));
        let p2 = task2_pings.clone();
        let task2 = tokio::spawn(watchdog(
            l.clone(),
            h,
            Duration::from_secs(10),
            stop.clone(),
            move || {
                p2.fetch_add(1, Ordering::Relaxed);
            },
        ));
        for _ in 0..30 {
            writer.beat();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(task2_pings.load(Ordering::Relaxed), 0);
        stop.cancel();
        task.await.expect("stops");
        task2.await.expect("stops");
        drop(health);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_period_is_not_a_wedge() {
        let l = Liveness::new();
        let c = l.register("collect.host", Duration::from_secs(1));
        c.set_period(Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(150)).await;
        assert_eq!(
            l.verdict(Instant::now(), 0, Duration::from_secs(10)),
            Ok(()),
            "silent for 150 s, within three periods of 60 s"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            l.verdict(Instant::now(), 0, Duration::from_secs(10))
                .is_err()
        );
    }
}
