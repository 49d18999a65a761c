//! `augur doctor`: what is wrong with this host's agent, in plain words, and what to do about it.
//!
//! Each check reads the configuration the agent would run with (the same flags, file and
//! environment), then the host (data directory, disk, ports), then the agent if it runs (its API,
//! its fleet: seeds, clocks). A check says `ok`, `warn` (works, but see to it), `fail` (will not
//! work as configured) or `skip` (cannot be checked from here, and why), and every `warn` and
//! `fail` says what to do. The exit status is 1 when any check failed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use augur_mesh::admission::{AdmissionError, FleetPublicKey, JoinToken};
use serde::{Deserialize, Serialize};

use crate::api::answers::{ClockAnswer, MemberList};
use crate::config::{Config, Sources};
use crate::sample::UnixMicros;

/// Where the packaged unit reads its configuration (`--config` wins; without either, the
/// embedded defaults).
pub const PACKAGED_CONFIG: &str = "/etc/augur/augur.toml";
/// A join token closer to its expiry than this is a warning.
pub const TOKEN_WARN_DAYS: u64 = 7;
/// Less free space than this on the data directory's file system fails (the writer then refuses
/// pushes with 507).
pub const MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;
/// A peer's clock further off than this (beyond the measurement's own error) is a warning...
pub const CLOCK_WARN_MS: f64 = 1_000.0;
/// ... and further than this a failure: gossip handshakes between clocks a minute apart are
/// refused (mesh `max_probe_skew_ms`), and timestamps on events and predictions disagree.
pub const CLOCK_FAIL_MS: f64 = 30_000.0;
/// How long the agent's API and a seed's QUIC endpoint have to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do, for `warn` and `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(check: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            verdict,
            detail: detail.into(),
            fix: None,
        }
    }

    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(check, Verdict::Ok, detail)
    }

    fn skip(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(check, Verdict::Skip, detail)
    }

    fn warn(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            fix: Some(fix.into()),
            ..Self::new(check, Verdict::Warn, detail)
        }
    }

    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            fix: Some(fix.into()),
            ..Self::new(check, Verdict::Fail, detail)
        }
    }
}

/// `augur doctor --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The configuration file checked (none: the embedded defaults).
    pub config_file: Option<PathBuf>,
    /// The API the agent was looked for at.
    pub api: String,
    pub checks: Vec<Check>,
    /// Whether no check failed.
    pub healthy: bool,
}

/// The configuration file the agent would read: `--config`, else the packaged one if present.
pub fn config_file(given: Option<&Path>) -> Option<PathBuf> {
    given.map(Path::to_path_buf).or_else(|| {
        let p = PathBuf::from(PACKAGED_CONFIG);
        p.exists().then_some(p)
    })
}

/// Runs every check.
pub async fn run(mut sources: Sources) -> Report {
    let mut checks = Vec::new();
    let file = config_file(sources.file.as_deref());
    sources.file.clone_from(&file);
    let shown = file.as_ref().map_or_else(
        || "the embedded defaults".to_owned(),
        |f| f.display().to_string(),
    );
    let cfg = match Config::load(&sources) {
        Ok(c) => {
            checks.push(Check::ok("configuration", format!("{shown}: valid")));
            c
        }
        Err(e) => {
            checks.push(Check::fail(
                "configuration",
                format!("{shown}: {e}"),
                "fix the field named above (`augur validate-config FILE` checks a file); until then the agent refuses to start",
            ));
            return finish(file, String::new(), checks);
        }
    };
    let api = api_url(cfg.api.http_addr);
    checks.push(data_dir(&cfg));
    let client = crate::net::http_client(Some(ANSWER_TIMEOUT)).ok();
    let status: Option<crate::api::Status> = match &client {
        Some(c) => get(c, &api, "/v1/status").await.ok(),
        None => None,
    };
    checks.push(match &status {
        Some(s) => Check::ok(
            "agent",
            format!(
                "answering at {api}: node {}, version {}, up {} s",
                s.node_name, s.version, s.uptime_s
            ),
        ),
        None => Check::warn(
            "agent",
            format!("not answering at {api}"),
            "start it (`systemctl start augur`; `journalctl -u augur -e` says why it stopped), or point --http-addr at where it listens",
        ),
    });
    if let (Some(c), Some(_)) = (&client, &status)
        && let Ok(h) = get::<crate::api::health::Health>(c, &api, "/healthz").await
        && h.status == crate::api::health::Verdict::Degraded
    {
        checks.push(Check::warn(
            "agent health",
            format!(
                "degraded: storage writable {}, {} task(s) ended unexpectedly",
                h.storage.writable, h.tasks.ended_unexpectedly
            ),
            format!("read {api}/healthz for the details; a task that ended needs a restart (`systemctl restart augur`)"),
        ));
    }
    let members: Option<MemberList> = match (&client, &status) {
        (Some(c), Some(_)) => get(c, &api, "/v1/members").await.ok(),
        _ => None,
    };
    checks.extend(ports(&cfg, status.as_ref(), members.as_ref()));
    let in_fleet = cfg.mesh.join_token.is_some() || cfg.mesh.join_token_file.is_some();
    if in_fleet {
        checks.extend(token_and_keys(&cfg));
        checks.extend(seeds(&cfg, members.as_ref()).await);
        checks.push(match (&client, &status) {
            (Some(c), Some(_)) => match get::<ClockAnswer>(c, &api, "/v1/clock").await {
                Ok(a) => clock(&a),
                Err(e) => Check::skip("clock", format!("the agent did not measure it: {e}")),
            },
            _ => Check::skip(
                "clock",
                "measured by the running agent against its peers; start it first",
            ),
        });
    } else {
        checks.push(Check::skip(
            "fleet",
            "not in a fleet (no join token configured): join token, fleet keys, seeds and clocks are not checked; see the README's \"Forming a fleet\"",
        ));
    }
    finish(file, api, checks)
}

fn finish(config_file: Option<PathBuf>, api: String, checks: Vec<Check>) -> Report {
    Report {
        healthy: checks.iter().all(|c| c.verdict != Verdict::Fail),
        config_file,
        api,
        checks,
    }
}

fn api_url(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}", addr.port())
}

async fn get<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    api: &str,
    path: &str,
) -> anyhow::Result<T> {
    let r = client.get(format!("{api}{path}")).send().await?;
    anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
    Ok(r.json().await?)
}

/// The data directory: there (or creatable), writable by whoever runs the check, and its file
/// system's free space.
fn data_dir(cfg: &Config) -> Check {
    let dir = cfg.data_dir();
    let name = "data directory";
    let Some(existing) = dir.ancestors().find(|p| p.exists()) else {
        return Check::fail(
            name,
            format!("{}: no part of it exists", dir.display()),
            "set data_dir to a folder on a local disk",
        );
    };
    if existing != dir {
        return Check::warn(
            name,
            format!(
                "{} does not exist yet (the agent creates it; {} exists)",
                dir.display(),
                existing.display()
            ),
            "start the agent once, or create it for the user the agent runs as (the package's is augur, in /var/lib/augur)",
        );
    }
    let probe = dir.join(format!(".augur-doctor-{}", std::process::id()));
    if let Err(e) = std::fs::write(&probe, b"") {
        return Check::fail(
            name,
            format!("{} is not writable by this user: {e}", dir.display()),
            "run the doctor as the agent's user (`sudo -u augur augur doctor`), or give that user the folder (`chown -R augur:augur DIR`)",
        );
    }
    let _ = std::fs::remove_file(&probe);
    match nix::sys::statvfs::statvfs(&dir) {
        Ok(s) => {
            let free = s.blocks_available() * s.fragment_size();
            let want = cfg.history.max_size.as_u64();
            let shown = bytesize::ByteSize(free).display().si().to_string();
            if free < MIN_FREE_BYTES {
                Check::fail(
                    name,
                    format!("{}: writable, {shown} free", dir.display()),
                    "free space on that file system: the agent refuses pushes (507) while it cannot write",
                )
            } else if free < want {
                Check::warn(
                    name,
                    format!(
                        "{}: writable, {shown} free, less than history.max_size ({})",
                        dir.display(),
                        bytesize::ByteSize(want).display().si()
                    ),
                    "free space, or lower history.max_size so the history fits",
                )
            } else {
                Check::ok(name, format!("{}: writable, {shown} free", dir.display()))
            }
        }
        Err(e) => Check::warn(
            name,
            format!("{}: writable; free space unknown ({e})", dir.display()),
            "check the file system with df",
        ),
    }
}

#[derive(Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

/// Each listening address: free, or held by this agent, or held by something else.
fn ports(
    cfg: &Config,
    status: Option<&crate::api::Status>,
    members: Option<&MemberList>,
) -> Vec<Check> {
    let mut list: Vec<(&str, &str, SocketAddr, Proto, Option<String>)> = vec![
        (
            "api.http_addr",
            "HTTP API",
            cfg.api.http_addr,
            Proto::Tcp,
            status.map(|s| s.http_addr.clone()),
        ),
        (
            "api.grpc_addr",
            "gRPC API",
            cfg.api.grpc_addr,
            Proto::Tcp,
            status.map(|s| s.grpc_addr.clone()),
        ),
    ];
    if cfg.mesh.join_token.is_some() || cfg.mesh.join_token_file.is_some() {
        let own_gossip = members.and_then(|m| {
            m.members
                .iter()
                .find(|x| x.is_self)
                .map(|x| x.gossip_addr.clone())
        });
        let own_p2p = members.and_then(|m| {
            let me = m.members.iter().find(|x| x.is_self)?;
            let port = cfg.mesh.p2p_addr.port();
            me.endpoints
                .as_ref()?
                .p2p
                .iter()
                .any(|a| a.contains(&format!("/udp/{port}/")))
                .then(|| cfg.mesh.p2p_addr.to_string())
        });
        list.push((
            "mesh.gossip_addr",
            "gossip (UDP)",
            cfg.mesh.gossip_addr,
            Proto::Udp,
            own_gossip,
        ));
        list.push((
            "mesh.p2p_addr",
            "libp2p QUIC (UDP)",
            cfg.mesh.p2p_addr,
            Proto::Udp,
            own_p2p,
        ));
    }
    list.into_iter()
        .map(|(key, what, addr, proto, agent_has)| {
            let name = format!("port {key}");
            let held_by_agent = agent_has.as_deref().is_some_and(|a| same_port(a, addr));
            let bound = match proto {
                Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
                Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
            };
            match bound {
                Ok(()) if status.is_some() && addr.port() != 0 => Check::warn(
                    name,
                    format!("{addr} ({what}) is free, but the agent is running: it listens elsewhere"),
                    "the agent runs with another configuration than the one checked; pass the same --config",
                ),
                Ok(()) => Check::ok(name, format!("{addr} ({what}) is free")),
                Err(_) if held_by_agent => {
                    Check::ok(name, format!("{addr} ({what}) is held by this agent"))
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::fail(
                    name,
                    format!("{addr} ({what}): {e}"),
                    "ports below 1024 need CAP_NET_BIND_SERVICE (the unit grants none); choose a port above 1023",
                ),
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Check::fail(
                    name,
                    format!("{addr} ({what}): no interface of this host has that address"),
                    format!("set {key} to an address of this host"),
                ),
                Err(e) => Check::fail(
                    name,
                    format!("{addr} ({what}): {e}, and not by this agent"),
                    format!(
                        "find what holds it (`ss -{}lnp 'sport = :{}'`) and stop it, or set {key} to another port",
                        match proto {
                            Proto::Tcp => "t",
                            Proto::Udp => "u",
                        },
                        addr.port()
                    ),
                ),
            }
        })
        .collect()
}

fn same_port(shown: &str, addr: SocketAddr) -> bool {
    shown
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.port() == addr.port())
}

/// The join token (for this node, signed by a trusted key, not near its expiry) and the fleet
/// keys.
fn token_and_keys(cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let keys: Result<Vec<FleetPublicKey>, _> =
        cfg.mesh.fleet_keys.iter().map(|k| k.parse()).collect();
    let keys = match keys {
        Ok(k) if k.is_empty() => {
            out.push(Check::fail(
                "fleet keys",
                "mesh.fleet_keys is empty: this node trusts no fleet",
                "add the fleet's public key (`augur fleet init` printed it: augur-fleet-pub:...) to mesh.fleet_keys",
            ));
            Vec::new()
        }
        Ok(k) => {
            out.push(Check::ok(
                "fleet keys",
                match k.len() {
                    1 => "one trusted fleet key".to_owned(),
                    n => format!("{n} trusted fleet keys (a rotation: drop the old one once every node has a token from the new)"),
                },
            ));
            k
        }
        Err(e) => {
            out.push(Check::fail(
                "fleet keys",
                format!("mesh.fleet_keys: {e}"),
                "copy the key exactly as `augur fleet init` printed it",
            ));
            Vec::new()
        }
    };
    let text = match (&cfg.mesh.join_token, &cfg.mesh.join_token_file) {
        (Some(t), _) => Ok(t.clone()),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read mesh.join_token_file {}: {e}", f.display())),
        (None, None) => Err("no join token configured".to_owned()),
    };
    let token = text.and_then(|t| t.trim().parse::<JoinToken>().map_err(|e| e.to_string()));
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            out.push(Check::fail(
                "join token",
                e,
                "issue this node a token on the machine holding the fleet key: `augur fleet token --peer-id PEER_ID` (PEER_ID: `augur fleet peer-id` here)",
            ));
            return out;
        }
    };
    let identity = match augur_mesh::NodeIdentity::load(&cfg.data_dir()) {
        Ok(Some(i)) => i,
        Ok(None) => {
            out.push(Check::warn(
                "join token",
                format!(
                    "no node key in {} yet, so the token cannot be matched to this node",
                    cfg.data_dir().display()
                ),
                "a token is bound to the node key: create the key first (`augur fleet peer-id`), then issue the token for that peer id",
            ));
            return out;
        }
        Err(e) => {
            out.push(Check::fail(
                "join token",
                e.to_string(),
                "run the doctor as the agent's user, or restore the node key",
            ));
            return out;
        }
    };
    let now_s = UnixMicros::now().as_unix_s();
    let peer = identity.peer_id();
    let reissue = format!(
        "issue a new one: `augur fleet token --peer-id {peer}` on the machine holding the fleet key"
    );
    out.push(match token.verify(&peer, &keys, now_s) {
        Ok(()) => {
            let left_s = token.expires_unix_s.saturating_sub(now_s);
            let days = left_s / 86_400;
            if days < TOKEN_WARN_DAYS {
                let left = humantime::format_duration(Duration::from_secs(left_s / 60 * 60));
                Check::warn(
                    "join token",
                    format!("valid for this node ({peer}), but expires in {left}"),
                    reissue,
                )
            } else {
                Check::ok(
                    "join token",
                    format!("valid for this node ({peer}); expires in {days} days"),
                )
            }
        }
        Err(e @ AdmissionError::Expired { .. }) => Check::fail("join token", e.to_string(), reissue),
        Err(e @ AdmissionError::WrongPeer { .. }) => Check::fail(
            "join token",
            e.to_string(),
            format!("the token belongs to another node (or this node's key changed); {reissue}"),
        ),
        Err(e @ AdmissionError::UntrustedFleet(_)) => Check::fail(
            "join token",
            e.to_string(),
            "add that fleet's public key to mesh.fleet_keys, or issue a token from a trusted fleet key",
        ),
        Err(e) => Check::fail("join token", e.to_string(), reissue),
    });
    out
}

/// Each seed: reached over UDP gossip (a live member at that address in the agent's view) and its
/// QUIC endpoint answering a handshake.
async fn seeds(cfg: &Config, members: Option<&MemberList>) -> Vec<Check> {
    if cfg.mesh.seeds.is_empty() {
        return vec![Check::ok(
            "seeds",
            "none configured (this node is the first; the others list it as their seed)",
        )];
    }
    let mut out = Vec::new();
    for seed in &cfg.mesh.seeds {
        let name = format!("seed {seed}");
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(seed.as_str())
            .await
            .map(Iterator::collect)
            .unwrap_or_default();
        if resolved.is_empty() {
            out.push(Check::fail(
                name,
                "does not resolve to an address",
                "fix the seed (HOST:PORT of a member's mesh.gossip_addr)",
            ));
            continue;
        }
        if resolved.contains(&cfg.mesh.gossip_addr) {
            out.push(Check::ok(name, "this node itself"));
            continue;
        }
        let Some(list) = members else {
            out.push(Check::skip(
                name,
                "its gossip port answers admitted nodes only, so the running agent's view is needed; start the agent",
            ));
            continue;
        };
        let member = list.members.iter().find(|m| {
            m.gossip_addr
                .parse::<SocketAddr>()
                .is_ok_and(|a| resolved.contains(&a))
        });
        let Some(m) = member else {
            out.push(Check::fail(
                format!("{name} (UDP)"),
                "no member at that address in this agent's view: its gossip never arrived",
                format!(
                    "check that augur runs there and that UDP port {} is open both ways between the hosts (firewalls, security groups)",
                    resolved[0].port()
                ),
            ));
            continue;
        };
        let who = m.node_name.clone().unwrap_or_else(|| m.peer_id.clone());
        let alive = matches!(
            m.status,
            augur_mesh::membership::MemberStatus::Alive
                | augur_mesh::membership::MemberStatus::Suspect
        );
        out.push(if alive {
            Check::ok(
                format!("{name} (UDP)"),
                format!("gossip with {who}: {:?}", m.status).to_lowercase(),
            )
        } else {
            Check::fail(
                format!("{name} (UDP)"),
                format!("{who} is {:?} in this agent's view", m.status).to_lowercase(),
                "check that augur runs there (`augur status` on it) and that UDP is open both ways",
            )
        });
        let p2p = m
            .endpoints
            .as_ref()
            .and_then(|e| e.p2p.iter().find(|a| !a.contains("/memory/")).cloned());
        out.push(match p2p.map(|a| a.parse::<augur_mesh::Multiaddr>()) {
            Some(Ok(addr)) => {
                let shown = addr.to_string();
                match augur_mesh::reach::quic_handshake(addr, ANSWER_TIMEOUT).await {
                    Ok(id) if id.to_string() == m.peer_id => {
                        Check::ok(format!("{name} (QUIC)"), format!("{shown} answered as {who}"))
                    }
                    Ok(id) => Check::warn(
                        format!("{name} (QUIC)"),
                        format!("{shown} answered as {id}, not as {who} ({})", m.peer_id),
                        "another process answers on that QUIC address; check the seed's mesh.p2p_addr",
                    ),
                    Err(e) => Check::fail(
                        format!("{name} (QUIC)"),
                        format!("{shown}: {e}"),
                        "open the seed's mesh.p2p_addr UDP port to this host; leases, the catalog and events travel there",
                    ),
                }
            }
            _ => Check::skip(
                format!("{name} (QUIC)"),
                "the member has not published its QUIC address yet",
            ),
        });
    }
    out
}

/// The agent's measured clock offsets against its peers.
fn clock(answer: &ClockAnswer) -> Check {
    if answer.peers.is_empty() {
        return Check::skip("clock", "no live peer to compare with");
    }
    let mut worst: Option<(f64, String)> = None;
    let mut unanswered = Vec::new();
    for p in &answer.peers {
        let who = p.node_name.clone().unwrap_or_else(|| p.peer_id.clone());
        match (p.offset_ms, p.rtt_ms) {
            (Some(o), Some(rtt)) => {
                // What the exchange cannot tell apart from the round trip does not count.
                let beyond = (o.abs() - rtt / 2.0).max(0.0);
                if worst.as_ref().is_none_or(|(w, _)| beyond > *w) {
                    worst = Some((beyond, format!("{who} {o:+.0} ms (round trip {rtt:.1} ms)")));
                }
            }
            _ => unanswered.push(format!(
                "{who}: {}",
                p.error.as_deref().unwrap_or("no answer")
            )),
        }
    }
    let fix =
        "run an NTP client on every host (chrony or systemd-timesyncd: `timedatectl set-ntp true`)";
    let Some((w, shown)) = worst else {
        return Check::warn(
            "clock",
            format!("no peer answered: {}", unanswered.join("; ")),
            "check the QUIC port between the hosts",
        );
    };
    let detail = format!(
        "{} peer(s) measured; furthest: {shown}{}",
        answer.peers.len() - unanswered.len(),
        if unanswered.is_empty() {
            String::new()
        } else {
            format!("; unanswered: {}", unanswered.join("; "))
        }
    );
    if w > CLOCK_FAIL_MS {
        Check::fail("clock", detail, fix)
    } else if w > CLOCK_WARN_MS {
        Check::warn("clock", detail, fix)
    } else {
        Check::ok("clock", detail)
    }
}

/// The report for a terminal.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    for c in &r.checks {
        let mark = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        };
        s.push_str(&format!("{mark}  {:<22} {}\n", c.check, c.detail));
        if let Some(f) = &c.fix {
            s.push_str(&format!("      {:<22} -> {f}\n", ""));
        }
    }
    let (fails, warns) = (
        r.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .count(),
        r.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Warn)
            .count(),
    );
    s.push_str(&match (fails, warns) {
        (0, 0) => "healthy: nothing to do\n".to_owned(),
        (0, w) => format!("healthy, with {w} warning(s)\n"),
        (f, w) => format!("{f} failure(s), {w} warning(s): see the arrows\n"),
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::answers::PeerClock;

    fn peer(name: &str, offset: Option<f64>, rtt: f64) -> PeerClock {
        PeerClock {
            peer_id: format!("id-{name}"),
            node_name: Some(name.to_owned()),
            offset_ms: offset,
            rtt_ms: offset.map(|_| rtt),
            error: offset.is_none().then(|| "no answer within 3s".to_owned()),
        }
    }

    #[test]
    fn clock_verdicts_discount_half_the_round_trip() {
        let cases = [
            (vec![peer("a", Some(3.0), 1.0)], Verdict::Ok),
            // 1.4 s off, but 1 s of round trip: within the 1 s warning once discounted.
            (vec![peer("a", Some(1_400.0), 1_000.0)], Verdict::Ok),
            (vec![peer("a", Some(-2_500.0), 2.0)], Verdict::Warn),
            (
                vec![peer("a", Some(5.0), 1.0), peer("b", Some(45_000.0), 1.0)],
                Verdict::Fail,
            ),
            (vec![peer("a", None, 0.0)], Verdict::Warn),
            (vec![], Verdict::Skip),
        ];
        for (peers, want) in cases {
            let c = clock(&ClockAnswer {
                peers: peers.clone(),
            });
            assert_eq!(c.verdict, want, "{peers:?}: {c:?}");
            assert_eq!(
                c.fix.is_some(),
                matches!(want, Verdict::Warn | Verdict::Fail)
            );
        }
    }

    #[test]
    fn the_api_url_reaches_a_wildcard_listener_through_loopback() {
        assert_eq!(
            api_url("0.0.0.0:7070".parse().expect("addr")),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            api_url("[::]:7070".parse().expect("addr")),
            "http://[::1]:7070"
        );
        assert_eq!(
            api_url("10.0.0.5:7070".parse().expect("addr")),
            "http://10.0.0.5:7070"
        );
    }
}
