//! The harness shared by augur's cross-crate suites and benchmark drivers: start real `augur agent`
//! processes on loopback (ports chosen by the kernel), read their JSON logs as events, signal them,
//! and talk to their HTTP and gRPC APIs.

pub mod dashboard_bench;
pub mod fuzz;
pub mod migrate_bench;
pub mod migration_fleet;
pub mod traffic_bench;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Longest a harness step waits for a process before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of the `augur` binary: `$AUGUR_BIN`, else the one built beside the running test binary
/// (built first with cargo if missing).
pub fn augur_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("AUGUR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe
        .parent()
        .context("test binary has no folder")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("augur");
    if !bin.exists() {
        let release = dir.ends_with("release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "augur-agent", "--bin", "augur"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .context("running cargo build for the augur binary")?;
        if !status.success() || !bin.exists() {
            bail!("cannot find or build {}; set AUGUR_BIN", bin.display());
        }
    }
    Ok(bin)
}

/// How to start an agent.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Data directory; a fresh temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// Configuration file text; empty means no file (embedded defaults).
    pub config: String,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    pub node_name: Option<String>,
    /// Fixed addresses (e.g. to restart on the same ports); kernel-chosen when `None`.
    pub http_addr: Option<SocketAddr>,
    pub grpc_addr: Option<SocketAddr>,
    /// Extra environment (`AUGUR_SECTION__KEY` configures the agent).
    pub env: Vec<(String, String)>,
    /// An environment variable set to the agent's own pid (as systemd sets `WATCHDOG_PID`): the
    /// agent is started through `/bin/sh`, which exports it and `exec`s the agent.
    pub pid_env: Option<String>,
}

/// A running `augur agent` process.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    pub pid: u32,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
    pub config_file: PathBuf,
    logs: mpsc::UnboundedReceiver<Value>,
    /// Lines read while waiting for another line, kept for later waits.
    seen: Vec<Value>,
    /// Whether dropping it also kills the service instances it ran (see [`reap_instances`]).
    reap: bool,
    _temp: Option<tempfile::TempDir>,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.reap {
            // Its children first: an instance the agent has just started may not have its pid
            // file yet, and would outlive the test.
            kill_children(self.pid);
            let _ = self.child.start_kill();
            reap_instances(&self.data_dir);
        }
    }
}

/// SIGKILLs the processes whose parent is `pid` (read from /proc).
pub fn kill_children(pid: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let parent = std::fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s[s.rfind(')')? + 2..].to_owned();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if parent == Some(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Kills the service instances an agent with data in `data_dir` ran (by their pid files, pid and
/// start time, as the agent itself finds them): an agent killed by a test leaves its `process`
/// instances running, as a crashed agent would; the harness does not leave them behind.
pub fn reap_instances(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("instances")) else {
        return;
    };
    for e in entries.flatten() {
        if e.path().extension().and_then(|x| x.to_str()) != Some("pid") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut f = text.split_whitespace().map(|x| x.parse::<u64>().ok());
        let (Some(Some(pid)), Some(Some(started))) = (f.next(), f.next()) else {
            continue;
        };
        let same = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s[s.rfind(')')? + 2..].to_owned();
                rest.split_whitespace().nth(19)?.parse::<u64>().ok()
            })
            == Some(started);
        if same && let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl AgentProcess {
    /// Starts an agent and waits for its "ready" log line.
    pub async fn start(opts: AgentOptions) -> anyhow::Result<Self> {
        let (temp, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir()?;
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        std::fs::create_dir_all(&data_dir)?;
        let config_file = data_dir.with_extension("toml");
        let mut cmd = match &opts.pid_env {
            None => Command::new(augur_bin()?),
            Some(var) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!("export {var}=$$; exec \"$0\" \"$@\""))
                    .arg(augur_bin()?);
                c
            }
        };
        cmd.arg("agent");
        if !opts.config.is_empty() {
            // No configuration at all runs on the embedded defaults.
            std::fs::write(&config_file, &opts.config)?;
            cmd.arg("--config").arg(&config_file);
        }
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .arg("--http-addr")
            .arg(
                opts.http_addr
                    .map_or("127.0.0.1:0".to_owned(), |a| a.to_string()),
            )
            .arg("--grpc-addr")
            .arg(
                opts.grpc_addr
                    .map_or("127.0.0.1:0".to_owned(), |a| a.to_string()),
            )
            .args(["--log-format", "json", "--log-level", "info"])
            .args(&opts.args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            // The agent reads every AUGUR_ variable as configuration (AUGUR_BIN included).
            if k.starts_with("AUGUR_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        if let Some(n) = &opts.node_name {
            cmd.arg("--node-name").arg(n);
        }
        let mut child = cmd.spawn().context("spawning augur agent")?;
        let pid = child.id().context("child has no pid")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, logs) = mpsc::unbounded_channel();
        // With AUGUR_TEST_LOG_DIR set, every agent's log is copied to <dir>/<pid>.log too.
        let mut copy = std::env::var_os("AUGUR_TEST_LOG_DIR").and_then(|d| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(std::path::Path::new(&d).join(format!("{pid}.log")))
                .ok()
        });
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(f) = copy.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(f, "{line}");
                }
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut agent = AgentProcess {
            child,
            pid,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            config_file,
            logs,
            seen: Vec::new(),
            reap: true,
            _temp: temp,
        };
        let ready = agent.wait_log("augur agent ready").await?;
        agent.http = field_addr(&ready, "http_addr")?;
        agent.grpc = field_addr(&ready, "grpc_addr")?;
        Ok(agent)
    }

    /// Waits for a log line whose message contains `needle` (including lines already read while
    /// waiting for others, such as those logged before "ready"); fails if the process exits first.
    pub async fn wait_log(&mut self, needle: &str) -> anyhow::Result<Value> {
        let matches = |v: &Value| {
            v.get("message")
                .and_then(Value::as_str)
                .unwrap_or_else(|| v.as_str().unwrap_or(""))
                .contains(needle)
        };
        if let Some(i) = self.seen.iter().position(matches) {
            return Ok(self.seen.remove(i));
        }
        let seen = &mut self.seen;
        let logs = &mut self.logs;
        let fut = async {
            while let Some(v) = logs.recv().await {
                if matches(&v) {
                    return Ok(v);
                }
                if seen.len() == 1000 {
                    seen.remove(0);
                }
                seen.push(v);
            }
            let recent: Vec<String> = seen
                .iter()
                .rev()
                .take(20)
                .rev()
                .map(Value::to_string)
                .collect();
            Err(anyhow!(
                "agent exited before logging {needle:?}; its last lines:\n{}",
                recent.join("\n")
            ))
        };
        tokio::time::timeout(STEP_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("no log line {needle:?} within {STEP_TIMEOUT:?}"))?
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// GETs a path of the HTTP API and parses the JSON answer, whatever the status.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        Ok(http().get(self.url(path)).send().await?.json().await?)
    }

    /// GETs a path of the HTTP API as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(http().get(self.url(path)).send().await?.text().await?)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        nix::sys::signal::kill(pid, sig)?;
        Ok(())
    }

    /// SIGKILL, then wait for the process to be gone. Its service instances are left running,
    /// as after a crash of the agent (a restart on the same data finds them).
    pub async fn kill9(mut self) -> anyhow::Result<PathBuf> {
        self.signal(nix::sys::signal::Signal::SIGKILL)?;
        self.child.wait().await?;
        self.reap = false;
        Ok(self.data_dir.clone())
    }

    /// SIGTERM, then wait for the exit (the agent stops its instances itself).
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        let status = tokio::time::timeout(STEP_TIMEOUT, self.child.wait()).await??;
        self.reap = false;
        Ok(status)
    }

    /// Waits for the process to exit (after a signal sent with [`signal`](Self::signal)).
    pub async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        let status = tokio::time::timeout(STEP_TIMEOUT, self.child.wait()).await??;
        self.reap = false;
        Ok(status)
    }

    /// Keeps the temporary folder alive past this process (for restarts on the same data).
    pub fn take_temp(&mut self) -> Option<tempfile::TempDir> {
        self._temp.take()
    }
}

fn field_addr(v: &Value, name: &str) -> anyhow::Result<SocketAddr> {
    v.get(name)
        .and_then(Value::as_str)
        .with_context(|| format!("ready line lacks {name}: {v}"))?
        .parse()
        .with_context(|| format!("ready line {name} is not an address"))
}

/// An HTTP client that never goes through a proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP_TIMEOUT)
        .build()
        .expect("a plain HTTP client builds")
}

/// Polls `check` until it returns `Some`, every 50 ms, for at most [`STEP_TIMEOUT`]. For waiting on
/// another process's state where there is no event to await.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of the OpenMetrics samples in `text` whose line starts with `prefix` (0 when none).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Builds a JSON-lines body of `n` samples for `resource` starting at `start_us` (1 ms apart).
pub fn json_lines(resource: &str, start_us: i64, n: usize) -> String {
    let mut body = String::with_capacity(n * 120);
    for i in 0..n {
        let ts = rfc3339(start_us + i as i64 * 1_000);
        body.push_str(&format!(
            "{{\"ts\":\"{ts}\",\"resource_id\":\"{resource}\",\"resource_type\":\"service\",\"metrics\":{{\"queue_len\":{i},\"latency_ms\":{}}}}}\n",
            (i % 100) as f64 * 0.5
        ));
    }
    body
}

/// RFC 3339 of a Unix-microsecond time.
pub fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .expect("in range")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// Now in Unix microseconds.
pub fn now_us() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_micros(),
    )
    .expect("fits")
}

/// Reads a process's CPU time (user+system, seconds) and RSS (bytes) from /proc.
pub fn proc_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok(((utime + stime) / ticks, rss_kb * 1024))
}

/// Peak RSS (VmHWM) of a process in bytes.
pub fn proc_peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmHWM")?
        .parse()?;
    Ok(kb * 1024)
}

/// Writes a file (convenience for config fragments in tests).
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Two different free UDP ports on loopback (bound, read, released; another process could take
/// one in between, which on a test machine's loopback does not happen in practice). Both sockets
/// are held until both are bound: a port released at once can be handed out again by the next
/// bind, and an agent refuses the same port for gossip and libp2p.
pub fn free_udp_port_pair() -> anyhow::Result<(u16, u16)> {
    let a = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let b = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// Runs the augur binary with `args` and parses its JSON output.
pub fn augur_json(args: &[&str]) -> anyhow::Result<Value> {
    let out = std::process::Command::new(augur_bin()?)
        .args(args)
        .output()
        .with_context(|| format!("running augur {args:?}"))?;
    if !out.status.success() {
        bail!(
            "augur {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A fleet of real `augur agent` processes on loopback: one fleet key, a token per node, the first
/// node as everyone's seed.
#[derive(Debug)]
pub struct LocalFleet {
    pub dir: tempfile::TempDir,
    pub fleet_public_key: String,
    pub agents: std::collections::BTreeMap<String, AgentProcess>,
    /// Gossip and QUIC ports per node (kept across restarts).
    ports: std::collections::BTreeMap<String, (u16, u16)>,
    seed: Option<String>,
    /// Extra configuration every node gets.
    pub config: String,
    /// The loopback address each node's service proxies listen on (one per node, so that every
    /// node can listen on a service's port).
    proxy_ips: std::collections::BTreeMap<String, std::net::IpAddr>,
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        // The agents (and their instances, found through their data) go before the folder.
        self.agents.clear();
    }
}

impl LocalFleet {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("fleet.key");
        let init = augur_json(&["fleet", "init", "--out", path_str(&key)?, "--json"])?;
        Ok(Self {
            fleet_public_key: init["fleet_public_key"]
                .as_str()
                .context("fleet_public_key")?
                .to_owned(),
            dir,
            agents: Default::default(),
            ports: Default::default(),
            seed: None,
            config: "[collect]\nhost = false\n".to_owned(),
            proxy_ips: Default::default(),
        })
    }

    /// The address `name`'s service proxies listen on (127.0.0.2 for the first node started,
    /// 127.0.0.3 for the second, ...).
    pub fn proxy_ip(&mut self, name: &str) -> std::net::IpAddr {
        let next = self.proxy_ips.len() as u8 + 2;
        *self
            .proxy_ips
            .entry(name.to_owned())
            .or_insert(std::net::IpAddr::from([127, 0, 0, next]))
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A node's gossip and QUIC ports.
    pub fn ports(&self, name: &str) -> Option<(u16, u16)> {
        self.ports.get(name).copied()
    }

    /// The fleet key file (to issue tokens in-process).
    pub fn fleet_key_path(&self) -> PathBuf {
        self.dir.path().join("fleet.key")
    }

    /// Issues a token for `name` signed by `fleet_key` (this fleet's unless given).
    fn token(&self, name: &str, fleet_key: Option<&Path>) -> anyhow::Result<String> {
        let key = fleet_key.map_or_else(|| self.dir.path().join("fleet.key"), Path::to_path_buf);
        let dir = self.data_dir(name);
        let v = augur_json(&[
            "fleet",
            "token",
            "--fleet-key",
            path_str(&key)?,
            "--data-dir",
            path_str(&dir)?,
            "--json",
        ])?;
        Ok(v["join_token"].as_str().context("join_token")?.to_owned())
    }

    /// Starts `name` with `token`. A node's UDP ports are picked free, then released for the agent
    /// to bind: another test can take one in between. A first start that finds its port taken
    /// picks new ones (a restart keeps its ports: its peers know them).
    async fn launch(&mut self, name: &str, token: String) -> anyhow::Result<()> {
        let fresh = !self.ports.contains_key(name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.launch_once(name, token.clone()).await {
                Err(e)
                    if fresh
                        && attempt < 4
                        && format!("{e:#}").contains("Address already in use") =>
                {
                    eprintln!("{name}: its UDP port was taken meanwhile; new ports ({e:#})");
                    self.ports.remove(name);
                }
                other => return other,
            }
        }
    }

    async fn launch_once(&mut self, name: &str, token: String) -> anyhow::Result<()> {
        let (gossip, p2p) = match self.ports.get(name) {
            Some(p) => *p,
            None => {
                let p = free_udp_port_pair()?;
                self.ports.insert(name.to_owned(), p);
                p
            }
        };
        let mut args = vec![
            "--gossip-addr".to_owned(),
            format!("127.0.0.1:{gossip}"),
            "--p2p-addr".to_owned(),
            format!("127.0.0.1:{p2p}"),
            "--join-token".to_owned(),
            token,
        ];
        for k in self.fleet_public_key.split(',') {
            args.push("--fleet-key".to_owned());
            args.push(k.to_owned());
        }
        // The first node seeds everyone; restarted, it is seeded by a running node (as a fleet
        // lists several seeds).
        let own = format!("127.0.0.1:{gossip}");
        let seed = match &self.seed {
            Some(s) if *s == own => self
                .agents
                .keys()
                .filter(|n| n.as_str() != name)
                .find_map(|n| self.ports.get(n))
                .map(|(g, _)| format!("127.0.0.1:{g}")),
            other => other.clone(),
        };
        if let Some(seed) = seed {
            args.push("--seed".to_owned());
            args.push(seed);
        }
        let proxy_ip = self.proxy_ip(name);
        let agent = AgentProcess::start(AgentOptions {
            data_dir: Some(self.data_dir(name)),
            config: self.config.clone(),
            args,
            node_name: Some(name.to_owned()),
            env: vec![("AUGUR_SERVICES__PROXY_IP".to_owned(), proxy_ip.to_string())],
            ..Default::default()
        })
        .await?;
        if self.seed.is_none() {
            self.seed = Some(format!("127.0.0.1:{gossip}"));
        }
        self.agents.insert(name.to_owned(), agent);
        Ok(())
    }

    /// Starts (or restarts) an admitted node.
    pub async fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let token = self.token(name, None)?;
        self.launch(name, token).await
    }

    /// Starts a node whose token comes from another fleet's key.
    pub async fn start_unadmitted(&mut self, name: &str) -> anyhow::Result<()> {
        let rogue = self.dir.path().join("rogue.key");
        if !rogue.exists() {
            augur_json(&["fleet", "init", "--out", path_str(&rogue)?, "--json"])?;
        }
        let token = self.token(name, Some(&rogue))?;
        // It trusts this fleet's key and the rogue one (so that it starts, and so that it admits
        // this fleet's nodes and tries to talk to them); this fleet's nodes do not trust the rogue.
        let rogue_pub = augur_json(&[
            "fleet",
            "token",
            "--fleet-key",
            path_str(&rogue)?,
            "--data-dir",
            path_str(&self.data_dir(name))?,
            "--json",
        ])?["fleet_public_key"]
            .as_str()
            .context("fleet_public_key")?
            .to_owned();
        let both = format!("{},{rogue_pub}", self.fleet_public_key);
        let own = std::mem::replace(&mut self.fleet_public_key, both);
        let r = self.launch(name, token).await;
        self.fleet_public_key = own;
        r
    }

    /// SIGKILLs a node: its agent, and the service instances it ran (the host is gone).
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let a = self.agents.remove(name).context("no such node")?;
        let data = a.kill9().await?;
        reap_instances(&data);
        Ok(())
    }

    /// The members `observer` lists, by node name, with their status.
    pub async fn statuses(
        &self,
        observer: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let v = self.agents[observer].get_json("/v1/members").await?;
        Ok(v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m["node_name"].as_str()?.to_owned(),
                    m["status"].as_str()?.to_owned(),
                ))
            })
            .collect())
    }

    /// Starts `names` and waits until every one sees every other alive.
    pub async fn form(&mut self, names: &[&str]) -> anyhow::Result<()> {
        for n in names {
            self.start(n).await?;
        }
        for n in names {
            self.until_all_see(n, "alive", Duration::from_secs(30))
                .await?;
        }
        Ok(())
    }

    /// Waits until every running node reaches every other over libp2p (its `/v1/clock` measures
    /// them all): gossip sees members alive before libp2p has admitted them.
    pub async fn until_connected(&self) -> anyhow::Result<()> {
        let others = self.agents.len().saturating_sub(1);
        eventually("every node reaches the others over libp2p", || async {
            for a in self.agents.values() {
                let v: Value = a.get_json("/v1/clock").await.ok()?;
                let peers = v["peers"].as_array()?;
                if !(peers.len() == others && peers.iter().all(|p| p["offset_ms"].is_number())) {
                    return None;
                }
            }
            Some(())
        })
        .await
    }

    /// Waits until every running node (but `except`) sees `target` with `status`; returns how long.
    pub async fn until_all_see(
        &self,
        target: &str,
        status: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let start = tokio::time::Instant::now();
        loop {
            let mut all = true;
            for name in self.agents.keys().filter(|n| *n != target) {
                let s = self.statuses(name).await?;
                if s.get(target).map(String::as_str) != Some(status) {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                let mut views = Vec::new();
                for name in self.agents.keys() {
                    views.push(format!("{name}: {:?}", self.statuses(name).await?));
                }
                bail!(
                    "not every node sees {target} {status} after {timeout:?}:\n{}",
                    views.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// Creates an operator credential (`augur fleet operator`) at `out` under the fleet key at `key`.
pub fn operator_credential(key: &Path, out: &Path) -> anyhow::Result<()> {
    augur_json(&[
        "fleet",
        "operator",
        "--fleet-key",
        path_str(key)?,
        "--out",
        path_str(out)?,
        "--json",
    ])?;
    Ok(())
}

/// Applies a service spec file through the agent at `api` (`augur service apply`).
pub fn apply_service(api: &str, file: &Path, cred: &Path) -> anyhow::Result<Value> {
    augur_json(&[
        "service",
        "apply",
        path_str(file)?,
        "--credential",
        path_str(cred)?,
        "--api",
        api,
        "--json",
    ])
}

/// A packaging tool (`systemd-analyze`, `dpkg-deb`, `lintian`, ...) on the PATH or in the usual
/// folders. Missing: `None` (the caller skips), unless `AUGUR_REQUIRE_PACKAGING` is set (`.ci/run`
/// installs them and sets it): then it panics.
pub fn packaging_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("AUGUR_REQUIRE_PACKAGING").is_none(),
            "{name} not found; .ci/run installs it (see the README)"
        );
        eprintln!("skipped: {name} not installed");
    }
    found
}

/// systemd's `systemd-analyze` (Debian's `systemd` package).
pub fn systemd_analyze() -> Option<PathBuf> {
    packaging_tool("systemd-analyze")
}

/// Debian's haproxy (`apt-get install haproxy`), or `$HAPROXY`. Missing: `None` (the caller
/// skips), unless `AUGUR_REQUIRE_HAPROXY` is set (`.ci/run` installs it and sets it): then it
/// panics.
pub fn haproxy_bin() -> Option<PathBuf> {
    let found = std::env::var_os("HAPROXY").map(PathBuf::from).or_else(|| {
        [
            "/usr/sbin/haproxy",
            "/usr/bin/haproxy",
            "/usr/local/sbin/haproxy",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("AUGUR_REQUIRE_HAPROXY").is_none(),
            "haproxy not found; install Debian's package (apt-get install haproxy) or set HAPROXY"
        );
        eprintln!("skipped: haproxy not installed");
    }
    found
}

/// Debian's Chromium and its ChromeDriver (`$CHROMIUM`, `$CHROMEDRIVER`, else /usr/bin), for the
/// dashboard's browser test and `augur-bench dashboard`. Missing: the test is skipped, unless
/// `AUGUR_REQUIRE_BROWSER` is set (`.ci/run` installs both and sets it), when it fails.
pub fn browser_bins() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, names: &[&str]| {
        std::env::var_os(var).map(PathBuf::from).or_else(|| {
            names
                .iter()
                .map(|n| Path::new("/usr/bin").join(n))
                .find(|p| p.exists())
        })
    };
    let found = find("CHROMIUM", &["chromium", "chromium-browser"])
        .zip(find("CHROMEDRIVER", &["chromedriver"]));
    if found.is_none() {
        assert!(
            std::env::var_os("AUGUR_REQUIRE_BROWSER").is_none(),
            "chromium or chromedriver not found; install Debian's packages together (apt-get install chromium chromium-driver) or set CHROMIUM and CHROMEDRIVER"
        );
        eprintln!("skipped: chromium and chromium-driver not installed");
    }
    found
}

/// A real HAProxy in TCP mode: one frontend on `front`, whose backend (`balance roundrobin`,
/// connect retries redispatched to another server) starts empty for augur to fill through the
/// admin socket.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    pub socket: PathBuf,
    pub front: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    pub async fn start(bin: &Path, backend: &str) -> anyhow::Result<Self> {
        Self::start_in_mode(bin, backend, "tcp").await
    }

    /// The same in `mode` (`tcp`, or `http`: requests balanced one by one, server connections
    /// kept alive and reused).
    pub async fn start_in_mode(bin: &Path, backend: &str, mode: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("admin.sock");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cfg = format!(
            "global\n    stats socket {} level admin\n    maxconn 4000\n\
             defaults\n    mode {mode}\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    \
             retries 3\n    option redispatch 1\n\
             frontend {backend}_in\n    bind 127.0.0.1:{port}\n    default_backend {backend}\n\
             backend {backend}\n    balance roundrobin\n",
            socket.display()
        );
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg)?;
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting haproxy")?;
        let h = Self {
            child,
            socket,
            front: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        // HAProxy creates its socket once it has parsed the configuration.
        eventually("HAProxy's admin socket", || async {
            h.command("show info").await.ok().map(|_| ())
        })
        .await?;
        Ok(h)
    }

    /// One Runtime API command's answer.
    pub async fn command(&self, command: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(&self.socket).await?;
        s.write_all(format!("{command}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// The `addr:port` of each server of `backend` that takes traffic (admin state ready).
    pub async fn ready_servers(&self, backend: &str) -> anyhow::Result<Vec<String>> {
        let said = self
            .command(&format!("show servers state {backend}"))
            .await?;
        let mut out = Vec::new();
        for line in said.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 19 && f[6] == "0" {
                out.push(format!("{}:{}", f[4], f[18]));
            }
        }
        Ok(out)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One request of a [`Load`].
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Index of the target it was sent to.
    pub target: usize,
    pub started: std::time::Instant,
    pub ended: std::time::Instant,
    /// The answer's body, or why there was none.
    pub result: Result<String, String>,
}

/// A steady load of HTTP GETs, each on a new connection, spread round-robin over targets.
#[derive(Debug)]
pub struct Load {
    outcomes: std::sync::Arc<std::sync::Mutex<Vec<Outcome>>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Sends `per_second` requests a second to `targets` (full URLs) until stopped.
    pub fn start(targets: Vec<String>, per_second: u32) -> Self {
        let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a plain HTTP client builds");
        let task = {
            let outcomes = outcomes.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let requests = tokio_util::task::TaskTracker::new();
                let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for n in 0usize.. {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let target = n % targets.len();
                    let url = targets[target].clone();
                    let client = client.clone();
                    let outcomes = outcomes.clone();
                    requests.spawn(async move {
                        let started = std::time::Instant::now();
                        let result = match client.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {
                                r.text().await.map_err(|e| format!("body: {e}"))
                            }
                            Ok(r) => Err(format!("status {}", r.status())),
                            Err(e) => Err(format!("{e:?}")),
                        };
                        outcomes.lock().expect("outcomes").push(Outcome {
                            target,
                            started,
                            ended: std::time::Instant::now(),
                            result,
                        });
                    });
                }
                requests.close();
                requests.wait().await;
            })
        };
        Self {
            outcomes,
            stop,
            task,
        }
    }

    /// The outcomes so far (requests still in flight are not among them).
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().expect("outcomes").clone()
    }

    /// Stops sending, waits for the requests in flight, and returns every outcome.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.cancel();
        let _ = self.task.await;
        self.outcomes.lock().expect("outcomes").clone()
    }
}
