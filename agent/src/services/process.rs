//! The `process` driver: the agent runs an instance's command itself. It hands the instance its
//! port in `PORT`, sends its output to the agent's log (line by line, bounded), restarts it with
//! exponential backoff when it exits on its own, and stops it with SIGTERM, then SIGKILL after the
//! spec's grace, reaping it either way. Each running instance has a pid file (pid and the
//! process's start time, so a reused pid is not mistaken for it) in the instances folder; on start
//! the agent stops whatever a previous run left behind before starting anew.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// What to run (from a spec's `[service.driver]` with `kind = "process"`).
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    pub stop_grace: Duration,
}

/// Restart delays: `first`, doubling up to `max`; a run longer than `reset_after` starts again at
/// `first`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before the restart that follows `previous` (None: the first) and a run of `ran`.
    pub fn next(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            Some(p) if ran < self.reset_after => (p * 2).min(self.max),
            _ => self.first,
        }
    }
}

/// Why an instance could not be run.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot start {command}: {reason} (check service.driver.command and workdir)")]
    Start { command: String, reason: String },
    #[error("cannot write the pid file {path}: {reason}")]
    PidFile { path: PathBuf, reason: String },
}

/// Counters of one instance.
#[derive(Debug, Default)]
pub struct InstanceStats {
    pub starts: AtomicU64,
    /// Exits the agent did not ask for.
    pub crashes: AtomicU64,
    /// Stops that needed SIGKILL after the grace.
    pub killed: AtomicU64,
}

/// One instance: its id (also its pid file's name), the address it listens on (`HOST` and `PORT`)
/// and what to run.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub host: std::net::IpAddr,
    pub port: u16,
    pub spec: ProcessSpec,
    /// Handed to the process: its service (`AUGUR_SERVICE`) and where its node's API takes its
    /// telemetry (`AUGUR_API`, the base URL), when known.
    pub service: String,
    pub api: Option<String>,
}

/// What the supervisor tells the runtime about an instance's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Running since `epoch` (Unix milliseconds): `detail` says how (`pid 1234`, `started by
    /// its hook`, `adopted`).
    Started {
        id: String,
        detail: String,
        epoch: u64,
        /// The process, when the driver knows it (its CPU and memory become telemetry).
        pid: Option<u32>,
    },
    /// It exited without being asked to, or could not start: restarted after a backoff.
    Exited { id: String, reason: String },
}

/// The start time of a process, from /proc (clock ticks since boot): with the pid, it names one
/// process for good.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The CPU time a process has used (seconds, user and system) and its resident memory (bytes),
/// from /proc (whose times are in USER_HZ, 100 per second on Linux).
pub fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the state.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some((ticks as f64 / 100.0, rss_kb * 1024))
}

/// Whether a process runs (exists and is not a zombie waiting to be reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn pid_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.pid"))
}

fn write_pid(dir: &Path, id: &str, pid: u32) -> Result<(), DriverError> {
    let path = pid_file(dir, id);
    let text = format!("{pid} {}\n", start_time(pid).unwrap_or(0));
    crate::files::write_atomic(&path, |w| {
        use std::io::Write as _;
        w.write_all(text.as_bytes())
    })
    .map_err(|e| DriverError::PidFile {
        path,
        reason: e.to_string(),
    })
}

/// Stops what a previous run of the agent left running (instances found by their pid files whose
/// process is still the same one), and removes the pid files. Returns the ids it stopped.
pub async fn stop_leftovers(dir: &Path, grace: Duration) -> Vec<String> {
    let mut stopped = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return stopped;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pid"))
            .map(str::to_owned)
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut f = text.split_whitespace().map(|x| x.parse::<u64>().ok());
        if let (Some(Some(pid)), Some(Some(started))) = (f.next(), f.next())
            && let Ok(pid) = u32::try_from(pid)
            && start_time(pid) == Some(started)
        {
            terminate(pid, grace).await;
            tracing::info!(instance = %id, pid, "stopped an instance left running by a previous run");
            stopped.push(id);
        }
        let _ = std::fs::remove_file(&path);
    }
    stopped
}

/// SIGTERM, then SIGKILL after `grace` if it is still there (not our child: polled).
async fn terminate(pid: u32, grace: Duration) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let p = Pid::from_raw(raw);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while kill(p, None).is_ok() && running(pid) {
        if tokio::time::Instant::now() >= deadline {
            let _ = kill(p, Signal::SIGKILL);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(instance: &Instance) -> Result<Child, DriverError> {
    let s = &instance.spec;
    let mut cmd = Command::new(&s.command);
    cmd.args(&s.args)
        .envs(&s.env)
        .env("HOST", instance.host.to_string())
        .env("PORT", instance.port.to_string())
        .env("AUGUR_INSTANCE", &instance.id)
        .env("AUGUR_SERVICE", &instance.service)
        .env("AUGUR_API", instance.api.as_deref().unwrap_or(""))
        // systemd's notification socket is the agent's, not its children's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &s.workdir {
        cmd.current_dir(dir);
    }
    cmd.spawn().map_err(|e| DriverError::Start {
        command: s.command.clone(),
        reason: e.to_string(),
    })
}

/// The longest output line kept (longer ones are cut).
const MAX_LINE: usize = 4096;

/// Sends a stream's lines to the log, as the instance's.
async fn forward<R: tokio::io::AsyncRead + Unpin>(id: String, stream: &'static str, r: R) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        line.truncate(line.floor_char_boundary(MAX_LINE));
        tracing::info!(instance = %id, stream, "{line}");
    }
}

/// Runs `instance` until `stop`: starts it, restarts it with `backoff` whenever it exits on its
/// own, and on `stop` terminates it (SIGTERM, SIGKILL after its grace) and removes its pid file.
/// A command that cannot start at all is retried on the same backoff (and counted). Starts and
/// exits are told on `reports`.
pub async fn supervise(
    instance: Instance,
    pid_dir: PathBuf,
    backoff: Backoff,
    stats: Arc<InstanceStats>,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
    stop: CancellationToken,
) {
    let mut delay: Option<Duration> = None;
    loop {
        let started = tokio::time::Instant::now();
        match spawn(&instance) {
            Ok(mut child) => {
                stats.starts.fetch_add(1, Ordering::Relaxed);
                let pid = child.id().unwrap_or(0);
                if let Err(e) = write_pid(&pid_dir, &instance.id, pid) {
                    tracing::warn!(instance = %instance.id, error = %e, "instance running without a pid file");
                }
                let outputs = tokio_util::task::TaskTracker::new();
                if let Some(o) = child.stdout.take() {
                    outputs.spawn(forward(instance.id.clone(), "stdout", o));
                }
                if let Some(e) = child.stderr.take() {
                    outputs.spawn(forward(instance.id.clone(), "stderr", e));
                }
                outputs.close();
                tracing::info!(instance = %instance.id, pid, port = instance.port, "instance started");
                let _ = reports.send(Report::Started {
                    id: instance.id.clone(),
                    detail: format!("pid {pid}"),
                    epoch: super::unix_ms(),
                    pid: Some(pid),
                });
                tokio::select! {
                    status = child.wait() => {
                        stats.crashes.fetch_add(1, Ordering::Relaxed);
                        let reason = match status {
                            Ok(s) => format!("exited: {s}"),
                            Err(e) => format!("lost: {e}"),
                        };
                        tracing::warn!(instance = %instance.id, %reason, "instance exited; restarting after a backoff");
                        let _ = reports.send(Report::Exited { id: instance.id.clone(), reason });
                    }
                    () = stop.cancelled() => {
                        if !stop_child(&mut child, pid, instance.spec.stop_grace).await {
                            stats.killed.fetch_add(1, Ordering::Relaxed);
                        }
                        outputs.wait().await;
                        let _ = std::fs::remove_file(pid_file(&pid_dir, &instance.id));
                        tracing::info!(instance = %instance.id, "instance stopped");
                        return;
                    }
                }
                outputs.wait().await;
            }
            Err(e) => {
                stats.crashes.fetch_add(1, Ordering::Relaxed);
                tracing::error!(instance = %instance.id, error = %e, "instance did not start; retrying after a backoff");
                let _ = reports.send(Report::Exited {
                    id: instance.id.clone(),
                    reason: e.to_string(),
                });
            }
        }
        let _ = std::fs::remove_file(pid_file(&pid_dir, &instance.id));
        let wait = backoff.next(delay, started.elapsed());
        delay = Some(wait);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child. Returns whether it ended on SIGTERM.
async fn stop_child(child: &mut Child, pid: u32, grace: Duration) -> bool {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_ok() {
        return true;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, grace: Duration) -> ProcessSpec {
        ProcessSpec {
            command: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            workdir: None,
            stop_grace: grace,
        }
    }

    fn quick() -> Backoff {
        Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(80),
            reset_after: Duration::from_secs(60),
        }
    }

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !f() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s"));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_long_run() {
        let b = quick();
        let short = Duration::from_millis(1);
        let mut d = b.next(None, short);
        let mut seen = vec![d];
        for _ in 0..4 {
            d = b.next(Some(d), short);
            seen.push(d);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![20, 40, 80, 80, 80]);
        assert_eq!(b.next(Some(d), Duration::from_secs(61)), b.first);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_with_its_port_restarts_after_a_crash_and_stops_with_sigkill_past_the_grace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        // Writes its port and greeting, then lives until killed; a first run crashes at once.
        let script = format!(
            "if [ ! -e {o}.once ]; then touch {o}.once; exit 3; fi; \
             echo \"$HOST $PORT $GREETING $AUGUR_INSTANCE\" > {o}; trap '' TERM; while true; do sleep 0.05; done",
            o = out.display()
        );
        let instance = Instance {
            id: "web-1".into(),
            host: std::net::IpAddr::from([127, 0, 0, 1]),
            port: 45_678,
            spec: sh(&script, Duration::from_millis(300)),
            service: "web".into(),
            api: None,
        };
        let stats = Arc::new(InstanceStats::default());
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(
            instance,
            dir.path().to_owned(),
            quick(),
            stats.clone(),
            tx,
            stop.clone(),
        ));
        wait_for("the instance's output", || {
            std::fs::read_to_string(&out).is_ok_and(|s| !s.is_empty())
        })
        .await;
        assert_eq!(
            std::fs::read_to_string(&out).expect("out").trim(),
            "127.0.0.1 45678 hi web-1"
        );
        assert_eq!(
            stats.starts.load(Ordering::Relaxed),
            2,
            "restarted after the crash"
        );
        assert_eq!(stats.crashes.load(Ordering::Relaxed), 1);
        // Told: started, exited (status 3), started again.
        let mut told = Vec::new();
        for _ in 0..3 {
            told.push(rx.recv().await.expect("a report"));
        }
        assert!(
            matches!(&told[0], Report::Started { id, .. } if id == "web-1"),
            "{told:?}"
        );
        assert!(
            matches!(&told[1], Report::Exited { reason, .. } if reason.contains("3")),
            "{told:?}"
        );
        assert!(matches!(&told[2], Report::Started { .. }), "{told:?}");
        let pid_path = dir.path().join("web-1.pid");
        let pid: u32 = std::fs::read_to_string(&pid_path)
            .expect("pid file")
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("pid");
        assert!(start_time(pid).is_some(), "running");
        let (cpu_s, rss) = usage(pid).expect("usage");
        assert!(cpu_s >= 0.0 && rss > 0, "{cpu_s} {rss}");
        // It ignores SIGTERM: killed after the grace, reaped, pid file gone.
        stop.cancel();
        task.await.expect("supervisor ends");
        assert_eq!(stats.killed.load(Ordering::Relaxed), 1);
        assert!(start_time(pid).is_none(), "reaped");
        assert!(!pid_path.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leftovers_of_a_previous_run_are_stopped_and_a_missing_command_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A process "left running": started here, recorded in a pid file, never stopped by us.
        let mut left = std::process::Command::new("/bin/sh")
            .args(["-c", "while true; do sleep 0.05; done"])
            .spawn()
            .expect("spawns");
        write_pid(dir.path(), "web-0", left.id()).expect("pid file");
        // A stale pid file (a pid that is not that process any more) is only removed.
        std::fs::write(dir.path().join("old-9.pid"), "1 12345\n").expect("write");
        let stopped = stop_leftovers(dir.path(), Duration::from_secs(2)).await;
        assert_eq!(stopped, vec!["web-0".to_owned()]);
        let status = left.wait().expect("reaped");
        assert!(!status.success());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        // A command that does not exist.
        let bad = Instance {
            id: "x-1".into(),
            host: std::net::IpAddr::from([127, 0, 0, 1]),
            port: 1,
            spec: ProcessSpec {
                command: "/nonexistent/program".into(),
                ..sh("", Duration::from_secs(1))
            },
            service: "x".into(),
            api: None,
        };
        assert!(matches!(spawn(&bad), Err(DriverError::Start { .. })));
    }
}
