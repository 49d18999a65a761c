//! The `hook` driver: the operator's scripts run the instance (a VM, a container, a systemd
//! unit), the agent tells them when. Each script is run by `/bin/sh -c` with the instance in its
//! environment (`AUGUR_SERVICE`, `AUGUR_INSTANCE`, `AUGUR_VERSION`, `HOST`, `PORT`), its output
//! sent to the agent's log, and a time limit. `start` must exit 0 once the instance is started,
//! `stop` once it is stopped; `status` prints `running` or `stopped` (anything else, or failing,
//! counts as stopped). The agent asks `status` every few seconds and starts the instance again
//! (with backoff) when it is not running.
//!
//! Surviving an agent restart: every instance has a record in the instances folder (its id,
//! port, version, epoch and scripts). On start the agent asks each recorded instance's `status`:
//! one still running and still placed here is adopted as it is (same port, same epoch); one no
//! longer placed here is stopped with its recorded `stop`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::process::{Backoff, Report};

/// How often `status` is asked while the instance runs.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How long `start` and `stop` may take.
const SCRIPT_LIMIT: Duration = Duration::from_secs(120);
/// How long `status` may take.
const STATUS_LIMIT: Duration = Duration::from_secs(10);
/// Output kept of one script run (the rest is dropped).
const MAX_OUTPUT: usize = 64 * 1024;

/// The scripts of a spec's `[service.driver]` with `kind = "hook"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scripts {
    pub start: String,
    pub stop: String,
    pub status: String,
}

/// One hook-driven instance, as recorded in the instances folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookInstance {
    pub id: String,
    pub service: String,
    pub version: u64,
    pub host: IpAddr,
    pub port: u16,
    /// When this run was started (kept when it is adopted).
    pub epoch: u64,
    pub scripts: Scripts,
}

/// Why a script did not do its part.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot run the {what} hook: {reason}")]
    Spawn { what: &'static str, reason: String },
    #[error("the {what} hook took longer than {limit:?}")]
    Timeout { what: &'static str, limit: Duration },
    #[error("the {what} hook failed ({status}): {output}")]
    Failed {
        what: &'static str,
        status: String,
        output: String,
    },
}

fn record_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.hook"))
}

/// Writes the instance's record (atomically).
pub fn save(dir: &Path, instance: &HookInstance) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_vec_pretty(instance).map_err(std::io::Error::other)?;
    crate::files::write_atomic(&record_path(dir, &instance.id), |w| {
        use std::io::Write as _;
        w.write_all(&text)
    })
}

/// Removes an instance's record.
pub fn forget(dir: &Path, id: &str) {
    let _ = std::fs::remove_file(record_path(dir, id));
}

/// The records a previous run left, by instance id (unreadable ones are logged and removed).
pub fn records(dir: &Path) -> BTreeMap<String, HookInstance> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("hook") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<HookInstance>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => {
                out.insert(r.id.clone(), r);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable hook instance record removed");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out
}

/// Runs one script of `instance` and returns its output, or why it failed.
async fn run(
    what: &'static str,
    script: &str,
    instance: &HookInstance,
    limit: Duration,
) -> Result<String, HookError> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .env("AUGUR_SERVICE", &instance.service)
        .env("AUGUR_INSTANCE", &instance.id)
        .env("AUGUR_VERSION", instance.version.to_string())
        .env("HOST", instance.host.to_string())
        .env("PORT", instance.port.to_string())
        // systemd's notification socket is the agent's, not its children's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HookError::Spawn {
            what,
            reason: e.to_string(),
        })?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let read = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.take(MAX_OUTPUT as u64).read_to_end(&mut out).await;
        }
        if let Some(e) = stderr.as_mut() {
            let _ = e.take(MAX_OUTPUT as u64).read_to_end(&mut err).await;
        }
        let status = child.wait().await;
        (status, out, err)
    };
    let (status, out, err) = tokio::time::timeout(limit, read)
        .await
        .map_err(|_| HookError::Timeout { what, limit })?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let err = String::from_utf8_lossy(&err).into_owned();
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!(instance = %instance.id, hook = what, "{line}");
    }
    match status {
        Ok(s) if s.success() => Ok(out),
        Ok(s) => Err(HookError::Failed {
            what,
            status: s.to_string(),
            output: err.trim().chars().take(512).collect(),
        }),
        Err(e) => Err(HookError::Spawn {
            what,
            reason: e.to_string(),
        }),
    }
}

/// Whether `status` says the instance runs.
pub async fn running(instance: &HookInstance) -> bool {
    match run("status", &instance.scripts.status, instance, STATUS_LIMIT).await {
        Ok(out) => out.trim() == "running",
        Err(e) => {
            tracing::debug!(instance = %instance.id, error = %e, "status hook failed; taken as stopped");
            false
        }
    }
}

/// Stops an instance with its `stop` hook.
pub async fn stop(instance: &HookInstance) -> Result<(), HookError> {
    run("stop", &instance.scripts.stop, instance, SCRIPT_LIMIT)
        .await
        .map(|_| ())
}

/// Runs `instance` until `stop_token`: adopts it if `status` says it runs already, else starts
/// it; asks `status` every few seconds and starts it again (after `backoff`) when it stopped;
/// on `stop_token`, stops it and removes its record. On `leave` (the agent stopping) it returns
/// and leaves the instance running, recorded, for the next run to adopt. Starts and stops are
/// told on `reports`.
pub async fn supervise(
    mut instance: HookInstance,
    dir: PathBuf,
    backoff: Backoff,
    status_every: Duration,
    reports: UnboundedSender<Report>,
    stop_token: CancellationToken,
    leave: CancellationToken,
) {
    if let Err(e) = save(&dir, &instance) {
        tracing::warn!(instance = %instance.id, error = %e, "hook instance without a record (it will not be adopted after a restart)");
    }
    let mut delay: Option<Duration> = None;
    let mut first = true;
    loop {
        let started = tokio::time::Instant::now();
        let up = if first && running(&instance).await {
            let _ = reports.send(Report::Started {
                id: instance.id.clone(),
                detail: "adopted (its status hook says running)".to_owned(),
                epoch: instance.epoch,
                pid: None,
            });
            true
        } else {
            let outcome = tokio::select! {
                () = stop_token.cancelled() => break,
                () = leave.cancelled() => return,
                r = run("start", &instance.scripts.start, &instance, SCRIPT_LIMIT) => r,
            };
            match outcome {
                Ok(_) => {
                    instance.epoch = super::unix_ms();
                    if let Err(e) = save(&dir, &instance) {
                        tracing::warn!(instance = %instance.id, error = %e, "hook instance record not updated");
                    }
                    let _ = reports.send(Report::Started {
                        id: instance.id.clone(),
                        detail: "started by its hook".to_owned(),
                        epoch: instance.epoch,
                        pid: None,
                    });
                    true
                }
                Err(e) => {
                    tracing::error!(instance = %instance.id, error = %e, "instance did not start; retrying after a backoff");
                    let _ = reports.send(Report::Exited {
                        id: instance.id.clone(),
                        reason: e.to_string(),
                    });
                    false
                }
            }
        };
        first = false;
        if up {
            // Watch it until it stops or is told to.
            loop {
                tokio::select! {
                    () = stop_token.cancelled() => {
                        finish(&instance, &dir).await;
                        return;
                    }
                    () = leave.cancelled() => {
                        tracing::info!(instance = %instance.id, "left running for the next run of the agent to adopt");
                        return;
                    }
                    () = tokio::time::sleep(status_every) => {}
                }
                if !running(&instance).await {
                    tracing::warn!(instance = %instance.id, "status hook says stopped; starting it again after a backoff");
                    let _ = reports.send(Report::Exited {
                        id: instance.id.clone(),
                        reason: "its status hook says it is not running".to_owned(),
                    });
                    break;
                }
            }
        }
        let wait = backoff.next(delay, started.elapsed());
        delay = Some(wait);
        tokio::select! {
            () = stop_token.cancelled() => break,
            () = leave.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
    finish(&instance, &dir).await;
}

/// Stops the instance with its hook (whatever state it is in) and removes its record.
async fn finish(instance: &HookInstance, dir: &Path) {
    match stop(instance).await {
        Ok(()) => tracing::info!(instance = %instance.id, "instance stopped by its hook"),
        Err(e) => tracing::error!(instance = %instance.id, error = %e, "stop hook failed"),
    }
    forget(dir, &instance.id);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scripts that keep the instance's state in a file of `dir`: start writes "running" (after
    /// recording its environment), stop removes it, status prints it.
    fn scripts(dir: &Path) -> Scripts {
        let state = dir.join("state");
        let env = dir.join("env");
        Scripts {
            start: format!(
                "echo \"$AUGUR_SERVICE $AUGUR_INSTANCE $AUGUR_VERSION $HOST $PORT\" > {env}; \
                 echo running > {state}; echo started >> {log}",
                env = env.display(),
                state = state.display(),
                log = dir.join("log").display()
            ),
            stop: format!(
                "rm -f {state}; echo stopped >> {log}",
                state = state.display(),
                log = dir.join("log").display()
            ),
            status: format!("cat {} 2>/dev/null || echo stopped", state.display()),
        }
    }

    fn instance(dir: &Path) -> HookInstance {
        HookInstance {
            id: "vm-0".into(),
            service: "vm".into(),
            version: 3,
            host: IpAddr::from([127, 0, 0, 1]),
            port: 4567,
            epoch: 1,
            scripts: scripts(dir),
        }
    }

    fn quick() -> Backoff {
        Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(40),
            reset_after: Duration::from_secs(60),
        }
    }

    fn log(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_watches_restarts_and_stops_through_the_hooks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = dir.path().join("instances");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            instance(dir.path()),
            records.clone(),
            quick(),
            Duration::from_millis(50),
            tx,
            stop.clone(),
            CancellationToken::new(),
        ));
        let first = rx.recv().await.expect("a report");
        assert!(
            matches!(&first, Report::Started { id, detail, epoch, .. }
                if id == "vm-0" && detail == "started by its hook" && *epoch > 1),
            "{first:?}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("env"))
                .expect("env")
                .trim(),
            "vm vm-0 3 127.0.0.1 4567"
        );
        assert!(records.join("vm-0.hook").exists(), "recorded");
        // It stops behind the agent's back: seen at the next status, started again.
        std::fs::remove_file(dir.path().join("state")).expect("rm");
        assert!(matches!(rx.recv().await, Some(Report::Exited { .. })));
        assert!(matches!(rx.recv().await, Some(Report::Started { .. })));
        stop.cancel();
        task.await.expect("ends");
        assert_eq!(log(dir.path()), vec!["started", "started", "stopped"]);
        assert!(!records.join("vm-0.hook").exists(), "record removed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_instance_is_adopted_and_a_failing_start_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("state"), "running\n").expect("state");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            instance(dir.path()),
            dir.path().join("instances"),
            quick(),
            Duration::from_millis(50),
            tx.clone(),
            stop.clone(),
            CancellationToken::new(),
        ));
        assert!(
            matches!(rx.recv().await, Some(Report::Started { detail, .. }) if detail.starts_with("adopted"))
        );
        assert!(log(dir.path()).is_empty(), "not started again");
        stop.cancel();
        task.await.expect("ends");
        // A start hook that fails: reported with its message, retried.
        let mut bad = instance(dir.path());
        bad.scripts.start = "echo 'no such VM image' >&2; exit 4".into();
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            bad,
            dir.path().join("instances"),
            quick(),
            Duration::from_millis(50),
            tx,
            stop.clone(),
            CancellationToken::new(),
        ));
        let Some(Report::Exited { reason, .. }) = rx.recv().await else {
            panic!("an exit report");
        };
        assert!(reason.contains("no such VM image"), "{reason}");
        assert!(
            matches!(rx.recv().await, Some(Report::Exited { .. })),
            "retried"
        );
        stop.cancel();
        task.await.expect("ends");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_that_stops_leaves_the_instance_running_and_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = dir.path().join("instances");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let leave = CancellationToken::new();
        let task = tokio::spawn(supervise(
            instance(dir.path()),
            records.clone(),
            quick(),
            Duration::from_millis(50),
            tx,
            CancellationToken::new(),
            leave.clone(),
        ));
        assert!(matches!(rx.recv().await, Some(Report::Started { .. })));
        leave.cancel();
        task.await.expect("ends");
        assert_eq!(log(dir.path()), vec!["started"], "not stopped");
        let left = super::records(&records);
        assert!(left["vm-0"].epoch > 1, "recorded with its epoch: {left:?}");
        assert!(running(&left["vm-0"]).await);
    }

    #[test]
    fn records_round_trip_and_unreadable_ones_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let i = instance(dir.path());
        save(dir.path(), &i).expect("saved");
        std::fs::write(dir.path().join("junk.hook"), "{").expect("junk");
        let found = records(dir.path());
        assert_eq!(found.get("vm-0"), Some(&i));
        assert_eq!(found.len(), 1);
        assert!(!dir.path().join("junk.hook").exists());
    }
}
