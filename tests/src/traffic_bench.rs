//! `augur-bench traffic`: the embedded proxy against a direct connection and against HAProxy 2.6
//! with the same backends (latency, throughput, memory with open connections), and the time from
//! an instance's death to its removal from every proxy of a three-agent fleet.
//!
//! One agent runs two replicas of `augur-echo` and keeps an HAProxy (TCP mode, `balance
//! roundrobin`) in step with its routes, so both proxies have the very same two backends. Every
//! request is `GET /` on a new connection (`Connection: close`), so each one costs the proxy a
//! connection to a backend, the work an L4 proxy does; the keep-alive figures send requests one
//! after another on connections held open.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{
    AgentOptions, AgentProcess, Haproxy, LocalFleet, apply_service, augur_json,
    operator_credential, path_str,
};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Sequential requests per target for latency.
    pub requests: usize,
    /// Seconds of load per target for throughput.
    pub secs: u64,
    /// Concurrent clients for throughput.
    pub clients: usize,
    /// Connections held open for the memory figure.
    pub connections: usize,
    /// Death-to-removal trials in the three-agent fleet.
    pub kills: usize,
    /// Protocols of the embedded proxy to compare (`tcp`, `http`).
    pub protocols: Vec<String>,
    /// Throughput rounds (each target in turn, `secs / rounds` each).
    pub rounds: u64,
}

/// `augur-echo`, beside this binary.
pub fn echo_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no folder")?;
    for d in [dir.to_path_buf(), dir.join("..")] {
        let p = d.join("augur-echo");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!(
        "augur-echo not found beside {}; build it: cargo build --release -p augur-tests --bin augur-echo",
        exe.display()
    )
}

fn spec(port: u16, replicas: u32, protocol: &str, echo: &Path) -> String {
    format!(
        "[service]\nname = \"echo\"\nport = {port}\nprotocol = \"{protocol}\"\nreplicas = {replicas}\n\
         [service.driver]\nkind = \"process\"\ncommand = \"{}\"\nstop_grace = \"2s\"\n\
         [service.health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         successes = 1\nfailures = 2\n\
         [service.placement]\nanti_affinity = false\n",
        echo.display()
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One `GET /` on a new connection, read to the end; its duration.
async fn one_request(addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(256);
    s.read_to_end(&mut buf).await?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        bail!("unexpected answer: {}", String::from_utf8_lossy(&buf));
    }
    Ok(started.elapsed())
}

/// One `GET /` on a kept-alive connection (augur-echo answers with a content-length).
async fn keepalive_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    buf.clear();
    loop {
        let mut chunk = [0u8; 512];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no content-length")?;
            if buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Latency of `requests` sequential requests to each target, interleaved (so that noise falls
/// on all alike): p50 and p99 in microseconds.
async fn latency(targets: &[(&str, SocketAddr)], requests: usize) -> anyhow::Result<Value> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(requests); targets.len()];
    // Warm-up.
    for (_, a) in targets {
        for _ in 0..50 {
            one_request(*a).await?;
        }
    }
    for _ in 0..requests {
        for (i, (_, a)) in targets.iter().enumerate() {
            samples[i].push(one_request(*a).await?.as_secs_f64() * 1e6);
        }
    }
    let mut out = serde_json::Map::new();
    for ((name, _), mut s) in targets.iter().zip(samples) {
        s.sort_by(f64::total_cmp);
        out.insert(
            (*name).to_owned(),
            json!({"p50_us": percentile(&s, 0.5), "p99_us": percentile(&s, 0.99)}),
        );
    }
    Ok(Value::Object(out))
}

/// Requests per second through `addr` with `clients` concurrent clients for `secs`.
async fn throughput(
    addr: SocketAddr,
    clients: usize,
    secs: u64,
    keepalive: bool,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        tasks.spawn(async move {
            let mut done = 0u64;
            let mut failed = 0u64;
            if keepalive {
                let mut s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let mut buf = Vec::with_capacity(512);
                while Instant::now() < deadline {
                    match keepalive_request(&mut s, &mut buf).await {
                        Ok(()) => done += 1,
                        Err(_) => {
                            failed += 1;
                            s = TcpStream::connect(addr).await?;
                        }
                    }
                }
            } else {
                while Instant::now() < deadline {
                    match one_request(addr).await {
                        Ok(_) => done += 1,
                        Err(_) => failed += 1,
                    }
                }
            }
            anyhow::Ok((done, failed))
        });
    }
    let mut done = 0;
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        let (d, f) = r??;
        done += d;
        failed += f;
    }
    if failed > done / 1000 {
        bail!(
            "{failed} of {} requests failed through {addr}",
            done + failed
        );
    }
    Ok(done as f64 / secs as f64)
}

/// CPU time a process has used, seconds (USER_HZ is 100 on Linux).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// The whole machine's CPU time since boot from `/proc/stat`: (busy, idle) in seconds, busy
/// being user, nice, system, irq, softirq and steal; idle being idle and iowait.
fn machine_cpu() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / 100.0;
    Ok((at(0) + at(1) + at(2) + at(5) + at(6) + at(7), at(3) + at(4)))
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

/// The resident memory `pid` gains while `n` connections through `addr` are open (each has
/// sent half a request, so that both proxies hold a connection to a backend for it).
async fn memory_with_connections(pid: u32, addr: SocketAddr, n: usize) -> anyhow::Result<Value> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(pid)?;
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n").await?;
        open.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = rss(pid)?;
    drop(open);
    Ok(json!({
        "connections": n,
        "rss_before_mib": before as f64 / 1048576.0,
        "rss_with_mib": with as f64 / 1048576.0,
        "per_connection_kib": (with.saturating_sub(before)) as f64 / 1024.0 / n as f64,
    }))
}

/// The pid of the HAProxy listening on `port` (its worker), from `ss`-free /proc scanning: the
/// newest `haproxy` process.
fn haproxy_pid() -> anyhow::Result<u32> {
    let mut best: Option<(u64, u32)> = None;
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if comm.trim() != "haproxy" {
            continue;
        }
        let started = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s[s.rfind(')')? + 2..].to_owned();
                rest.split_whitespace().nth(19)?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        if best.is_none_or(|(t, _)| started > t) {
            best = Some((started, pid));
        }
    }
    best.map(|(_, p)| p).context("no haproxy process")
}

/// The proxies' comparison on one agent.
pub async fn proxies(s: &Settings, progress: impl Fn(&str)) -> anyhow::Result<Value> {
    let echo = echo_bin()?;
    let bin = crate::haproxy_bin().context("HAProxy is needed: apt-get install haproxy")?;
    let haproxy = Haproxy::start(&bin, "echo").await?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("fleet.key");
    let init = augur_json(&["fleet", "init", "--out", path_str(&key)?, "--json"])?;
    let public = init["fleet_public_key"].as_str().context("key")?.to_owned();
    let cred = dir.path().join("operator.cred");
    operator_credential(&key, &cred)?;
    let agent = AgentProcess::start(AgentOptions {
        config: format!(
            "[collect]\nhost = false\n[mesh]\nfleet_keys = [\"{public}\"]\n\
             [services]\ndrain_grace = \"2s\"\n\
             [services.haproxy]\nsocket = \"{}\"\n",
            haproxy.socket.display()
        ),
        ..Default::default()
    })
    .await?;
    let mut results = serde_json::Map::new();
    for protocol in s.protocols.iter().map(String::as_str) {
        progress(&format!("{protocol}: starting"));
        let port = free_port()?;
        let file = dir.path().join("echo.toml");
        std::fs::write(&file, spec(port, 2, protocol, &echo))?;
        apply_service(&agent.url(""), &file, &cred)?;
        let list = crate::eventually("two routed instances and HAProxy in step", || async {
            let v = agent.get_json("/v1/services").await.ok()?;
            let routed = v["routes"]["services"]["echo"].as_object()?.len();
            let fresh = v["instances"]
                .as_array()?
                .iter()
                .all(|i| i["health"] == "healthy" && i["version"] == v["versions"]["echo"]);
            let ha = haproxy.ready_servers("echo").await.ok()?.len();
            (routed == 2 && ha == 2 && fresh).then_some(v)
        })
        .await?;
        let backends: Vec<SocketAddr> = list["instances"]
            .as_array()
            .context("instances")?
            .iter()
            .filter_map(|i| i["addr"].as_str()?.parse().ok())
            .collect();
        let embedded = SocketAddr::from(([127, 0, 0, 1], port));
        let mut targets = vec![("direct", backends[0]), ("embedded", embedded)];
        // HAProxy in the same mode: the one the agent keeps in step (TCP), or, for HTTP, a second
        // one in HTTP mode given the same two backends.
        let http_haproxy = if protocol == "http" {
            let h = Haproxy::start_in_mode(&bin, "echo", "http").await?;
            for (i, b) in backends.iter().enumerate() {
                h.command(&format!("add server echo/s{i} {b}")).await?;
                h.command(&format!("enable server echo/s{i}")).await?;
            }
            Some(h)
        } else {
            None
        };
        targets.push((
            "haproxy",
            http_haproxy.as_ref().map_or(haproxy.front, |h| h.front),
        ));
        progress(&format!("{protocol}: latency"));
        let lat = latency(&targets, s.requests).await?;
        let mut tput = serde_json::Map::new();
        let mut cpu = serde_json::Map::new();
        // The newest haproxy process: the HTTP one when there is one.
        let ha_pid = haproxy_pid()?;
        // Interleaved rounds (each target in turn, `ROUNDS` times, `secs / ROUNDS` each), so
        // that the machine's drift falls on every target alike; each figure is the median of
        // its rounds, each ratio the median of the rounds' ratios.
        let rounds = s.rounds.max(1);
        let window = (s.secs / rounds).max(1);
        for keepalive in [false, true] {
            let suffix = if keepalive { "_keepalive" } else { "" };
            let mut rps: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
            let mut per_request: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
            let mut machine: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len()];
            for round in 0..rounds {
                for (i, (name, addr)) in targets.iter().enumerate() {
                    progress(&format!(
                        "{protocol}: throughput{} round {}/{rounds}: {name}",
                        if keepalive { " kept alive" } else { "" },
                        round + 1
                    ));
                    // The proxy's own CPU per request (the agent's for the embedded one).
                    let pid = match *name {
                        "embedded" => Some(agent.pid),
                        "haproxy" => Some(ha_pid),
                        _ => None,
                    };
                    let before = pid.map(cpu_seconds).transpose()?;
                    let (busy, idle) = machine_cpu()?;
                    let r = throughput(*addr, s.clients, window, keepalive).await?;
                    let served = r * window as f64;
                    if let (Some(p), Some(b)) = (pid, before) {
                        let used = cpu_seconds(p)? - b;
                        per_request[i].push(used * 1e6 / served);
                    }
                    // The whole machine's: client, proxy, backends and the kernel's share.
                    let (busy_after, idle_after) = machine_cpu()?;
                    let (b, d) = (busy_after - busy, idle_after - idle);
                    machine[i].push((b * 1e6 / served, d / (b + d).max(1e-9)));
                    rps[i].push(r);
                }
            }
            let median = |v: &[f64]| {
                let mut v = v.to_vec();
                v.sort_by(f64::total_cmp);
                percentile(&v, 0.5)
            };
            for (i, (name, _)) in targets.iter().enumerate() {
                tput.insert(format!("{name}{suffix}"), json!(median(&rps[i])));
                if !per_request[i].is_empty() {
                    cpu.insert(format!("{name}{suffix}"), json!(median(&per_request[i])));
                }
                let busy: Vec<f64> = machine[i].iter().map(|m| m.0).collect();
                let idle: Vec<f64> = machine[i].iter().map(|m| m.1).collect();
                cpu.insert(
                    format!("machine_{name}{suffix}"),
                    json!({"busy_us_per_request": median(&busy), "idle_share": median(&idle)}),
                );
            }
            if let (Some(e), Some(h)) = (
                targets.iter().position(|t| t.0 == "embedded"),
                targets.iter().position(|t| t.0 == "haproxy"),
            ) {
                let ratios: Vec<f64> = rps[e].iter().zip(&rps[h]).map(|(a, b)| a / b).collect();
                tput.insert(
                    format!("embedded_over_haproxy{suffix}"),
                    json!({"median": median(&ratios), "rounds": ratios}),
                );
            }
        }
        progress(&format!("{protocol}: memory"));
        let mem_embedded = memory_with_connections(agent.pid, embedded, s.connections).await?;
        let mem_haproxy = memory_with_connections(
            ha_pid,
            http_haproxy.as_ref().map_or(haproxy.front, |h| h.front),
            s.connections,
        )
        .await?;
        drop(http_haproxy);
        results.insert(
            protocol.to_owned(),
            json!({
                "latency": lat,
                "throughput_rps": tput,
                "proxy_cpu_us_per_request": cpu,
                "memory_embedded": mem_embedded,
                "memory_haproxy": mem_haproxy,
            }),
        );
    }
    Ok(json!({
        "clients": s.clients,
        "secs": s.secs,
        "requests": s.requests,
        "results": results,
    }))
}

/// Death to removal from every proxy of a three-agent fleet (and from the HAProxy one of them
/// keeps in step), over `kills` trials.
pub async fn removal(s: &Settings, progress: impl Fn(&str)) -> anyhow::Result<Value> {
    let echo = echo_bin()?;
    let haproxy = match crate::haproxy_bin() {
        Some(b) => Some(Haproxy::start(&b, "echo").await?),
        None => None,
    };
    let mut fleet = LocalFleet::new()?;
    let base = "[collect]\nhost = false\n[services]\ndrain_grace = \"2s\"\n".to_owned();
    let nodes = ["n1", "n2", "n3"];
    for n in nodes {
        fleet.config = match (&haproxy, n) {
            (Some(h), "n1") => format!(
                "{base}[services.haproxy]\nsocket = \"{}\"\n",
                h.socket.display()
            ),
            _ => base.clone(),
        };
        fleet.start(n).await?;
    }
    for n in nodes {
        fleet
            .until_all_see(n, "alive", Duration::from_secs(30))
            .await?;
    }
    let cred = fleet.dir.path().join("operator.cred");
    operator_credential(&fleet.fleet_key_path(), &cred)?;
    let file = fleet.dir.path().join("echo.toml");
    std::fs::write(
        &file,
        spec(free_port()?, 2, "tcp", &echo)
            .replace("anti_affinity = false", "anti_affinity = true"),
    )?;
    apply_service(&fleet.agents["n1"].url(""), &file, &cred)?;
    let routes = |fleet: &LocalFleet| {
        let urls: Vec<String> = nodes
            .iter()
            .map(|n| fleet.agents[*n].url("/v1/services"))
            .collect();
        async move {
            let mut out = Vec::new();
            for u in urls {
                let v: Value = crate::http().get(u).send().await.ok()?.json().await.ok()?;
                out.push(
                    v["routes"]["services"]["echo"]
                        .as_object()?
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>(),
                );
            }
            Some(out)
        }
    };
    let mut embedded_ms = Vec::new();
    let mut haproxy_ms = Vec::new();
    for trial in 0..s.kills {
        progress(&format!("removal: trial {}/{}", trial + 1, s.kills));
        crate::eventually("both instances in every proxy", || async {
            let r = routes(&fleet).await?;
            let ha = match &haproxy {
                Some(h) => h.ready_servers("echo").await.ok()?.len(),
                None => 2,
            };
            (r.iter().all(|x| x.len() == 2) && ha == 2).then_some(())
        })
        .await?;
        // Let the instance run a while before its death.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let v = fleet.agents["n1"].get_json("/v1/services").await?;
        let victim = v["instances"]
            .as_array()
            .context("instances")?
            .iter()
            .find(|i| i["id"] == format!("echo-{}", trial % 2))
            .cloned()
            .context("victim")?;
        let node = victim["node"].as_str().context("node")?.to_owned();
        let addr = victim["addr"].as_str().context("addr")?.to_owned();
        let id = victim["id"].as_str().context("id")?.to_owned();
        let pid: i32 = std::fs::read_to_string(
            fleet
                .data_dir(&node)
                .join("instances")
                .join(format!("{id}.pid")),
        )?
        .split_whitespace()
        .next()
        .context("pid")?
        .parse()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let died = Instant::now();
        let mut embedded_done = None;
        let mut haproxy_done = None;
        while embedded_done.is_none() || (haproxy.is_some() && haproxy_done.is_none()) {
            if died.elapsed() > Duration::from_secs(30) {
                bail!("instance {id} not removed within 30 s");
            }
            if embedded_done.is_none()
                && routes(&fleet)
                    .await
                    .is_some_and(|r| r.iter().all(|x| !x.contains(&addr)))
            {
                embedded_done = Some(died.elapsed());
            }
            if let Some(h) = &haproxy
                && haproxy_done.is_none()
                && !h.ready_servers("echo").await?.contains(&addr)
            {
                haproxy_done = Some(died.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        embedded_ms.extend(embedded_done.map(|d| d.as_secs_f64() * 1000.0));
        haproxy_ms.extend(haproxy_done.map(|d| d.as_secs_f64() * 1000.0));
    }
    let summary = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        json!({"median_ms": percentile(&v, 0.5), "max_ms": v.last().copied(), "trials": v})
    };
    Ok(json!({
        "kills": s.kills,
        "every_embedded_proxy": summary(embedded_ms),
        "haproxy": summary(haproxy_ms),
    }))
}
