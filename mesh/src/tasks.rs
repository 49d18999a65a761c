//! Where long-running tasks run and what stops them: one `TaskTracker` (so whoever started them can
//! await every one) and a `CancellationToken` per group (so groups stop in an order). A task that
//! ends while its group is not stopping (it returned, or panicked) ended unexpectedly: it is logged,
//! counted and listed for `/healthz`.
//!
//! The mesh spawns its tasks (the swarm, the membership supervisor, the task tying them together)
//! on the [`Tasks`] it is given; the agent gives every task it runs the same tracker. It lives in
//! the mesh because the mesh is the lowest crate that runs tasks.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt as _;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::clock::Clock;

/// Tasks that ended unexpectedly, shared by every group of one tracker.
#[derive(Debug, Default)]
pub struct TaskHealth {
    ended: AtomicU64,
    /// The last few, newest last: (task, why, unix ms).
    recent: Mutex<Vec<Ended>>,
}

/// A task that ended unexpectedly.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ended {
    pub task: String,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// How many unexpected ends are kept for `/healthz`.
const KEEP_ENDED: usize = 16;

impl TaskHealth {
    /// Unexpected ends since start.
    pub fn ended_total(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    /// The most recent unexpected ends, newest last.
    pub fn recent(&self) -> Vec<Ended> {
        self.recent.lock().clone()
    }

    fn record(&self, e: Ended) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        let mut r = self.recent.lock();
        r.push(e);
        let excess = r.len().saturating_sub(KEEP_ENDED);
        r.drain(..excess);
    }
}

/// A group of tasks on a shared tracker: stopped together by its token, awaited with the tracker.
#[derive(Clone, Debug)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    health: Arc<TaskHealth>,
    clock: Clock,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new(
            TaskTracker::new(),
            CancellationToken::new(),
            Clock::system(),
        )
    }
}

impl Tasks {
    pub fn new(tracker: TaskTracker, stop: CancellationToken, clock: Clock) -> Self {
        Self {
            tracker,
            stop,
            health: Arc::default(),
            clock,
        }
    }

    /// A group on the same tracker that stops with this one, or on its own before it.
    pub fn child(&self) -> Self {
        Self {
            tracker: self.tracker.clone(),
            stop: self.stop.child_token(),
            health: self.health.clone(),
            clock: self.clock.clone(),
        }
    }

    /// Spawns `task`, which must return once [`stopped`](Self::stopped) resolves. Ending before
    /// that is recorded as unexpected.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        let health = self.health.clone();
        let clock = self.clock.clone();
        self.tracker.spawn(async move {
            let ended = AssertUnwindSafe(task).catch_unwind().await;
            if stop.is_cancelled() {
                return;
            }
            let reason = match ended {
                Ok(()) => "returned".to_owned(),
                Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
            };
            tracing::error!(task = name, %reason, "a task ended unexpectedly");
            health.record(Ended {
                task: name.to_owned(),
                reason,
                at_unix_ms: clock.now_ms(),
            });
        })
    }

    /// Stops this group (and its children).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once this group is asked to stop.
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    /// The group's token, for a task that takes one.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// The clock the group's tasks read (the system's, or a test's).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn health(&self) -> &Arc<TaskHealth> {
        &self.health
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_ending_before_its_group_stops_is_recorded_and_one_stopped_is_not() {
        let tasks = Tasks::default();
        let group = tasks.child();
        let g = group.clone();
        group.spawn("waits", async move { g.stopped().await });
        tasks.spawn("returns", async {}).await.expect("joins");
        tasks
            .spawn("panics", async { panic!("boom") })
            .await
            .expect("the panic is caught");
        let ended = tasks.health().recent();
        assert_eq!(tasks.health().ended_total(), 2);
        assert_eq!(
            ended
                .iter()
                .map(|e| (e.task.as_str(), e.reason.as_str()))
                .collect::<Vec<_>>(),
            vec![("returns", "returned"), ("panics", "panicked: boom")]
        );
        group.stop();
        tasks.tracker().close();
        tasks.tracker().wait().await;
        assert_eq!(
            tasks.health().ended_total(),
            2,
            "a stopped task ended as asked"
        );
    }
}
