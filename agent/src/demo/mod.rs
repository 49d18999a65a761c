//! `augur demo`: one command, no set-up. Starts a local fleet of agents on loopback (this very
//! binary, each with its own data directory, ports and loopback address), applies a signed fleet
//! document (every node a lease voter) and the sample HTTP service (`augur demo-service`, one
//! replica), puts it under continuous load through another node's proxy, injects a fault into the
//! serving instance (or, for `sudden_crash`, kills its node), and tells the story as the fleet's
//! events come: telemetry drifting, the prediction, the election, the witness, the lease, each
//! migration step, traffic moving, the request counter. `--json` prints one JSON object at the end
//! ([`Outcome`]).
//!
//! Time: the demo's telemetry runs `10 x speed` samples a second and its resource type's horizon
//! is `30 s / speed`, so the engine sees, in samples, a default agent's 5-minute horizon at one
//! sample a second; a fault's course lasts `90 s / speed` (a 15-minute drift at one sample a
//! second). Everything else (failure detection, leases, instance starts, health checks, the
//! proxies) runs in real time: `--speed` compresses the fault and what the engine sees of it,
//! not the fleet's reactions, so lead times shrink as speed grows.

pub mod fault;
pub mod service;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use augur_mesh::NodeIdentity;
use augur_mesh::admission::FleetKey;
use augur_mesh::operator::{OperatorCredential, Role};
use augur_orchestrate::spec::Strategy;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::process::{Child, Command};

use self::fault::Fault;
use crate::api::answers::{CatalogAnswer, CatalogChange, ServiceList};
use crate::cli::client::Agent;
use crate::fleet::events::Page;
use crate::services::catalog::{FLEET_NAME, KIND_FLEET, KIND_SPEC};

/// What `augur demo` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub fault: Fault,
    /// Agents in the fleet (3 to 5).
    pub nodes: usize,
    /// How the instance is moved (default: `warm_standby` for `sudden_crash`, `live` otherwise).
    pub strategy: Option<Strategy>,
    pub speed: f64,
    pub seed: u64,
    /// How long a `none` run watches (default: one fault course).
    pub duration: Option<Duration>,
    /// Requests a second of the load.
    pub rate: u32,
    /// Tell the story on stderr (off with `--json`).
    pub story: bool,
    /// Keep the fleet's folder (logs, data) instead of deleting it.
    pub keep: bool,
}

/// What happened, in seconds from the start of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub fault: String,
    pub seed: u64,
    pub speed: f64,
    pub nodes: usize,
    pub strategy: String,
    /// When the fault was injected (or the node killed).
    pub injected_at_s: Option<f64>,
    /// When the failing instance was first predicted to fail (its node's threshold crossing).
    pub predicted_at_s: Option<f64>,
    /// When the fault would have made (or made) the instance fail.
    pub failure_at_s: Option<f64>,
    pub migration_started_s: Option<f64>,
    pub migration_done_s: Option<f64>,
    /// Failure minus migration done (positive: moved before it).
    pub lead_time_s: Option<f64>,
    /// `sudden_crash`: from the crash until another instance served the load again.
    pub served_again_after_s: Option<f64>,
    pub requests_total: u64,
    pub requests_failed: u64,
    /// `pre-empted` (moved before the failure), `reactive` (after it), `missed` (failed, never
    /// moved), `none` (nothing moved, nothing failed), `false_migration` (moved, nothing failed).
    pub outcome: String,
    pub instance: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub coordinator: Option<String>,
    /// Migrations that completed during the run.
    pub migrations: u32,
    /// The first failed requests: when (seconds from the start) and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_failures: Vec<String>,
    pub duration_s: f64,
    /// The fleet's folder, when kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder: Option<PathBuf>,
}

struct Node {
    name: String,
    api: String,
    proxy_ip: String,
    child: Child,
}

/// The fleet: its nodes (killed when dropped) and folder (deleted when dropped, unless kept).
struct Fleet {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    nodes: Vec<Node>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.start_kill();
        }
    }
}

/// A free TCP port on loopback (the service's, on every node's proxy address).
fn free_tcp() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An agent's four ports on loopback (HTTP, gRPC, gossip, libp2p), all different: every socket
/// is held until all are bound (a port released at once can be handed out again by the next
/// bind, and an agent refuses the same port for gossip and libp2p).
fn free_ports() -> anyhow::Result<(u16, u16, u16, u16)> {
    let http = std::net::TcpListener::bind("127.0.0.1:0")?;
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")?;
    let gossip = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let p2p = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok((
        http.local_addr()?.port(),
        grpc.local_addr()?.port(),
        gossip.local_addr()?.port(),
        p2p.local_addr()?.port(),
    ))
}

/// The story, on stderr with a counter under it when it is a terminal.
struct Story {
    on: bool,
    start: Instant,
    bar: indicatif::ProgressBar,
}

impl Story {
    fn new(on: bool, start: Instant) -> Self {
        let bar = if on && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(120));
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        Self { on, start, bar }
    }

    fn say(&self, tag: &str, text: &str) {
        self.say_at(self.start.elapsed().as_secs_f64(), tag, text);
    }

    fn say_at(&self, t: f64, tag: &str, text: &str) {
        if !self.on {
            return;
        }
        let line = format!("{t:6.1}s  {tag:<10} {text}");
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    fn status(&self, text: String) {
        self.bar.set_message(text);
    }
}

async fn start_fleet(o: &Options, story: &Story) -> anyhow::Result<(Fleet, FleetKey)> {
    let dir = tempfile::Builder::new().prefix("augur-demo-").tempdir()?;
    let path = dir.path().to_path_buf();
    let key = FleetKey::create(&path.join("fleet.key"))?;
    let public = key.public().to_string();
    let exe = std::env::current_exe().context("cannot find the augur binary to run the fleet")?;
    let horizon = fault::horizon(o.speed).as_secs_f64();
    let mut fleet = Fleet {
        dir: Some(dir),
        path,
        nodes: Vec::new(),
    };
    let mut seed: Option<String> = None;
    for i in 0..o.nodes {
        let name = format!("n{}", i + 1);
        let data = fleet.path.join(&name);
        std::fs::create_dir_all(&data)?;
        let peer = NodeIdentity::load_or_create(&data)?.peer_id();
        let token = key.issue(peer, crate::sample::UnixMicros::now().as_unix_s() + 86_400);
        let (http, grpc, gossip, p2p) = free_ports()?;
        let proxy_ip = format!("127.0.0.{}", i + 2);
        let config = format!(
            "[collect]\nhost = false\n\
             [services]\nproxy_ip = \"{proxy_ip}\"\ndrain_grace = \"2s\"\n\
             [resource_types.demo]\nhorizon = \"{horizon}s\"\n{}",
            fault::LIMITS_TOML
        );
        let config_file = fleet.path.join(format!("{name}.toml"));
        std::fs::write(&config_file, config)?;
        let log = std::fs::File::create(fleet.path.join(format!("{name}.log")))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("agent")
            .arg("--config")
            .arg(&config_file)
            .arg("--data-dir")
            .arg(&data)
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--node-name", &name])
            .args(["--gossip-addr", &format!("127.0.0.1:{gossip}")])
            .args(["--p2p-addr", &format!("127.0.0.1:{p2p}")])
            .args(["--join-token", &token.to_string()])
            .args(["--fleet-key", &public])
            .args(["--log-format", "json"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(s) = &seed {
            cmd.args(["--seed", s]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        seed.get_or_insert(format!("127.0.0.1:{gossip}"));
        fleet.nodes.push(Node {
            name: name.clone(),
            api: format!("http://127.0.0.1:{http}"),
            proxy_ip,
            child,
        });
        story.say(
            "fleet",
            &format!("started {name} (its API on 127.0.0.1:{http})"),
        );
    }
    // Every node sees every other alive.
    let n = o.nodes;
    for i in 0..fleet.nodes.len() {
        let agent = Agent::new(&fleet.nodes[i].api)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // An agent that exited (a port taken between choosing it and binding it, say) is
            // reported with the end of its log, not waited for.
            for node in &mut fleet.nodes {
                if let Ok(Some(status)) = node.child.try_wait() {
                    let log =
                        std::fs::read_to_string(fleet.path.join(format!("{}.log", node.name)))
                            .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    bail!(
                        "{} exited ({status}) while the fleet formed: {}",
                        node.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    );
                }
            }
            let alive = agent
                .get::<Value>("/v1/members", &[])
                .await
                .ok()
                .and_then(|v| {
                    Some(
                        v["members"]
                            .as_array()?
                            .iter()
                            .filter(|m| m["status"] == "alive")
                            .count(),
                    )
                });
            if alive == Some(n) {
                break;
            }
            if Instant::now() > deadline {
                bail!("timed out after 60s waiting for the fleet to form");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    story.say("fleet", &format!("{n} agents see each other alive"));
    Ok((fleet, key))
}

/// [`start_fleet`], tried a second time on new ports and in a new folder when the first fleet
/// does not form (its agents are stopped first).
async fn start_fleet_retrying(o: &Options, story: &Story) -> anyhow::Result<(Fleet, FleetKey)> {
    match start_fleet(o, story).await {
        Ok(f) => Ok(f),
        Err(e) => {
            story.say("fleet", &format!("{e:#}; starting a fresh fleet"));
            tracing::warn!(error = %format!("{e:#}"), "the demo's fleet did not form; trying once more");
            start_fleet(o, story).await
        }
    }
}

/// Polls `check` every 100 ms until it answers, at most `within`.
async fn until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_and_send(
    agent: &Agent,
    cred: &OperatorCredential,
    kind: &str,
    name: &str,
    text: String,
) -> anyhow::Result<CatalogAnswer> {
    let doc = cred.sign(
        kind,
        name,
        1,
        text.into_bytes(),
        crate::sample::UnixMicros::now().as_unix_s(),
    );
    agent
        .post_json(
            "/v1/services",
            &CatalogChange {
                document: doc.to_string(),
            },
        )
        .await
}

/// The serving, healthy instance of `demo` every node's proxy routes to, as `agent` sees it:
/// (id, node, addr).
async fn serving(agent: &Agent) -> Option<(String, String, String)> {
    let list: ServiceList = agent.get("/v1/services", &[]).await.ok()?;
    let serving: Vec<_> = list
        .instances
        .iter()
        .filter(|i| {
            i.service == "demo"
                && i.role == augur_orchestrate::migration::Role::Serving
                && i.health == "healthy"
        })
        .collect();
    let [one] = serving.as_slice() else {
        return None;
    };
    let routed = list
        .routes
        .services
        .get("demo")
        .is_some_and(|r| r.len() == 1 && r.contains_key(&one.addr));
    routed.then(|| (one.id.clone(), one.node.clone(), one.addr.clone()))
}

/// A healthy serving instance of `demo` other than `not`, routed by `agent`'s proxy.
async fn routed_other(agent: &Agent, not: &str) -> Option<(String, String)> {
    let list: ServiceList = agent.get("/v1/services", &[]).await.ok()?;
    let routes = list.routes.services.get("demo")?;
    list.instances
        .iter()
        .find(|i| {
            i.service == "demo"
                && i.id != not
                && i.health == "healthy"
                && i.role == augur_orchestrate::migration::Role::Serving
                && routes.contains_key(&i.addr)
        })
        .map(|i| (i.id.clone(), i.node.clone()))
}

/// Counters of the load.
#[derive(Debug)]
struct Load {
    total: AtomicU64,
    failed: AtomicU64,
    first_failures: parking_lot::Mutex<Vec<String>>,
    /// When the last failed request was sent.
    last_failure: parking_lot::Mutex<Option<Instant>>,
    start: Instant,
}

fn run_load(
    url: String,
    rate: u32,
    counters: Arc<Load>,
    stop: tokio_util::sync::CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()?;
    let inner = tasks.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (client, url, c) = (client.clone(), url.clone(), counters.clone());
            inner.spawn(async move {
                let sent = Instant::now();
                let at = sent.duration_since(c.start).as_secs_f64();
                let r = client.get(&url).send().await;
                let err = match r {
                    Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                        Ok(_) => None,
                        Err(e) => Some(format!("body: {e}")),
                    },
                    Ok(resp) => Some(format!("HTTP {}", resp.status())),
                    Err(e) => Some(if e.is_timeout() {
                        "timed out".to_owned()
                    } else {
                        e.to_string()
                    }),
                };
                c.total.fetch_add(1, Ordering::Relaxed);
                if let Some(e) = err {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut last = c.last_failure.lock();
                        if last.is_none_or(|l| l < sent) {
                            *last = Some(sent);
                        }
                    }
                    let mut f = c.first_failures.lock();
                    if f.len() < 5 {
                        f.push(format!("{at:.1}s: {e}"));
                    }
                }
            });
        }
    });
    Ok(())
}

/// A line of the story for a fleet event, if it tells one.
fn tell(e: &crate::fleet::events::Logged, instance: &str) -> Option<(&'static str, String)> {
    use augur_mesh::EventKind as K;
    let who = e.event.node_name.clone().unwrap_or_default();
    let r = e.event.resource_id.as_deref().unwrap_or("");
    Some(match &e.event.kind {
        K::PredictionAbove(c) if r == instance => (
            "predict",
            format!(
                "{who}: {r} predicted to fail (p = {:.2} >= {:.2}{}; {})",
                c.failure_probability,
                c.threshold,
                c.eta_s
                    .map(|s| format!(", in about {s:.0} s"))
                    .unwrap_or_default(),
                c.drivers.join(", ")
            ),
        ),
        K::PredictionBelow(c) if r == instance => (
            "predict",
            format!(
                "{who}: {r} back below its threshold (p = {:.2})",
                c.failure_probability
            ),
        ),
        K::MemberDead(_) => ("member", format!("{who} declared dead")),
        K::Autonomy(rep) => (
            "decide",
            format!(
                "{who}: {} {} ({}, rank {}){}",
                format!("{:?}", rep.stage).to_lowercase(),
                rep.case.instance,
                rep.case.trigger.name(),
                rep.rank,
                if rep.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", rep.detail)
                }
            ),
        ),
        K::MigrationStep(m) => (
            "migrate",
            format!(
                "{who}: {} {} -> {} ({}, epoch {}): {} {}",
                m.id, m.from, m.to, m.strategy, m.epoch, m.step, m.note
            ),
        ),
        K::MigrationFinished(m) => (
            "migrate",
            format!(
                "{who}: {} {}",
                m.id,
                m.outcome.as_deref().unwrap_or("finished")
            ),
        ),
        K::InstanceStarted(i) if i.service == "demo" => {
            ("instance", format!("{who}: {} started", i.instance))
        }
        K::InstanceHealthy(i) if i.service == "demo" => {
            ("instance", format!("{who}: {} healthy", i.instance))
        }
        K::InstanceStopped(i) if i.service == "demo" => {
            ("instance", format!("{who}: {} stopped", i.instance))
        }
        K::InstanceExited(i) if i.service == "demo" => (
            "instance",
            format!(
                "{who}: {} exited{}",
                i.instance,
                i.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        ),
        _ => return None,
    })
}

/// Runs the demo; returns what happened.
pub async fn run(o: Options) -> anyhow::Result<Outcome> {
    if !(3..=5).contains(&o.nodes) {
        bail!("--nodes {}: the demo runs 3 to 5 agents", o.nodes);
    }
    if !(o.speed > 0.0 && o.speed <= 10.0) {
        bail!("--speed {}: from above 0 to 10", o.speed);
    }
    let start = Instant::now();
    let start_unix_ms = crate::sample::UnixMicros::now().as_unix_ms();
    let story = Story::new(o.story, start);
    let strategy = o.strategy.unwrap_or(if o.fault == Fault::SuddenCrash {
        Strategy::WarmStandby
    } else {
        Strategy::Live
    });
    let (fleet, key) = start_fleet_retrying(&o, &story).await?;
    let first = Agent::new(&fleet.nodes[0].api)?;
    let cred = OperatorCredential::create(
        &key,
        Role::Operator,
        crate::sample::UnixMicros::now().as_unix_s() + 86_400,
    );
    // Every node a voter.
    let mut voters = Vec::new();
    for n in &fleet.nodes {
        let s: Value = Agent::new(&n.api)?.get("/v1/status", &[]).await?;
        voters.push(format!(
            "\"{}\"",
            s["peer_id"].as_str().context("a peer id")?
        ));
    }
    let doc = format!(
        "[leases]\nvoters = [{}]\nhold_down = \"10m\"\nduration = \"6s\"\n\
         [autonomy]\nmode = \"act\"\ndwell = \"3s\"\ntakeover = \"10s\"\n",
        voters.join(", ")
    );
    sign_and_send(&first, &cred, KIND_FLEET, FLEET_NAME, doc).await?;
    for n in &fleet.nodes {
        let a = Agent::new(&n.api)?;
        until(Duration::from_secs(30), "the fleet document", || async {
            let v: Value = a.get("/v1/leases", &[]).await.ok()?;
            (v["config_version"] == 1).then_some(())
        })
        .await?;
    }
    story.say(
        "fleet",
        &format!(
            "fleet document signed and everywhere: {} voters, one move at a time, autonomy acts",
            fleet.nodes.len()
        ),
    );
    let port = free_tcp()?;
    let exe = std::env::current_exe()?;
    let strategy_name = match strategy {
        Strategy::Live => "live",
        Strategy::WarmStandby => "warm_standby",
        Strategy::BlueGreen => "blue_green",
    };
    let spec = format!(
        "[service]\nname = \"demo\"\nport = {port}\nprotocol = \"http\"\nreplicas = 1\n\
         standbys = {}\nstrategy = \"{strategy_name}\"\n\
         [service.driver]\nkind = \"process\"\ncommand = {:?}\nargs = [\"demo-service\"]\n\
         stop_grace = \"2s\"\n\
         env = {{ AUGUR_DEMO_SPEED = \"{}\", AUGUR_DEMO_SEED = \"{}\" }}\n\
         [service.health]\nhttp = \"/healthz\"\ninterval = \"250ms\"\ntimeout = \"200ms\"\n\
         successes = 1\nfailures = 2\n",
        u32::from(strategy == Strategy::WarmStandby),
        exe.display().to_string(),
        o.speed,
        o.seed
    );
    sign_and_send(&first, &cred, KIND_SPEC, "demo", spec).await?;
    // Every node's proxy routes to the same one instance, for a second in a row.
    let apis: Vec<Agent> = fleet
        .nodes
        .iter()
        .map(|n| Agent::new(&n.api))
        .collect::<anyhow::Result<_>>()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut agreed: Option<((String, String, String), Instant)> = None;
    let (instance, host, addr) = loop {
        let mut seen = Vec::new();
        for a in &apis {
            seen.push(serving(a).await);
        }
        let one = seen[0]
            .clone()
            .filter(|one| seen.iter().all(|s| s.as_ref() == Some(one)));
        match (one, &agreed) {
            (Some(one), Some((s, since))) if *s == one => {
                if since.elapsed() >= Duration::from_secs(1) {
                    break one;
                }
            }
            (Some(one), _) => agreed = Some((one, Instant::now())),
            (None, _) => agreed = None,
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after 60 s waiting for every proxy to route to one instance of the sample service"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if strategy == Strategy::WarmStandby {
        until(Duration::from_secs(60), "a healthy standby", || async {
            let list: ServiceList = first.get("/v1/services", &[]).await.ok()?;
            list.instances
                .iter()
                .any(|i| {
                    i.service == "demo"
                        && i.role == augur_orchestrate::migration::Role::Standby
                        && i.health == "healthy"
                })
                .then_some(())
        })
        .await?;
    }
    story.say(
        "service",
        &format!("demo ({strategy_name}) serves from {instance} on {host} ({addr})"),
    );
    // The load goes through a proxy of another node than the instance's, and the story is read
    // from that node.
    let observer = fleet
        .nodes
        .iter()
        .position(|n| n.name != host)
        .context("another node")?;
    let observer_api = Agent::new(&fleet.nodes[observer].api)?;
    let load = Arc::new(Load {
        total: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_failures: parking_lot::Mutex::default(),
        last_failure: parking_lot::Mutex::default(),
        start,
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let target = format!("http://{}:{port}/", fleet.nodes[observer].proxy_ip);
    run_load(target.clone(), o.rate, load.clone(), stop.clone(), &tasks)?;
    story.say(
        "traffic",
        &format!(
            "{} requests a second through {}'s proxy ({target})",
            o.rate, fleet.nodes[observer].name
        ),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Inject.
    let course = fault::course(o.speed);
    let t = |i: Instant| i.duration_since(start).as_secs_f64();
    let injected = Instant::now();
    let mut fleet = fleet;
    let failure_at = match o.fault {
        Fault::None => None,
        Fault::SuddenCrash => {
            // At a seeded point of the course's first half.
            let u = 0.2
                + 0.3
                    * ((o.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64
                        / (1u64 << 53) as f64);
            let at = injected + course.mul_f64(u);
            story.say(
                "fault",
                &format!(
                    "{host} will crash (SIGKILL, with its instance) in {:.0} s",
                    course.mul_f64(u).as_secs_f64()
                ),
            );
            Some(at)
        }
        f => {
            let client = reqwest::Client::builder().no_proxy().build()?;
            let r = client
                .post(format!(
                    "http://{addr}/fault?kind={}&seconds={}",
                    f.name(),
                    course.as_secs_f64()
                ))
                .send()
                .await
                .context("cannot inject the fault into the instance")?;
            if !r.status().is_success() {
                bail!("the instance refused the fault: {}", r.status());
            }
            story.say(
                "fault",
                &format!(
                    "{} injected into {instance}: {} drifts for {:.0} s, then it fails",
                    f.name(),
                    f.metric().unwrap_or("-"),
                    course.as_secs_f64()
                ),
            );
            Some(injected + course)
        }
    };
    let watch_for = match o.fault {
        Fault::None => o.duration.unwrap_or(course),
        _ => course + Duration::from_secs(30),
    };
    let hard_end = injected + watch_for;
    let mut out = Outcome {
        fault: o.fault.name().to_owned(),
        seed: o.seed,
        speed: o.speed,
        nodes: o.nodes,
        strategy: strategy_name.to_owned(),
        injected_at_s: Some(t(injected)),
        failure_at_s: failure_at.map(t),
        instance: Some(instance.clone()),
        from: Some(host.clone()),
        ..Outcome::default()
    };
    let ev_time =
        |e: &crate::fleet::events::Logged| (e.event.ts_ms as f64 - start_unix_ms as f64) / 1000.0;
    let host_api = fleet
        .nodes
        .iter()
        .find(|n| n.name == host)
        .map(|n| n.api.clone());
    let mut since = 0u64;
    let mut crashed: Option<Instant> = None;
    let mut done_at: Option<Instant> = None;
    let mut last_telemetry = Instant::now() - Duration::from_secs(10);
    let mut served_again: Option<Instant> = None;
    let mut last_value: Option<f64> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        // The crash.
        if o.fault == Fault::SuddenCrash
            && crashed.is_none()
            && failure_at.is_some_and(|f| now >= f)
            && let Some(n) = fleet.nodes.iter_mut().find(|n| n.name == host)
        {
            let _ = n.child.start_kill();
            crashed = Some(now);
            story.say(
                "fault",
                &format!("{host} crashed (SIGKILL): its instance is gone"),
            );
        }
        // The instance's telemetry, every few seconds, while it lives.
        if let (Some(api), Some(m)) = (&host_api, o.fault.metric())
            && now.duration_since(last_telemetry) >= Duration::from_secs(5)
            && done_at.is_none()
        {
            last_telemetry = now;
            if let Ok(a) = Agent::new(api) {
                let r: Option<Value> = a.get(&format!("/v1/resources/{instance}"), &[]).await.ok();
                let p: Option<Value> = a
                    .get("/predict_failure", &[("resource_id", instance.as_str())])
                    .await
                    .ok();
                if let (Some(r), Some(p)) = (r, p) {
                    // The latest sample may be the node's own (the instance's CPU and health),
                    // without the service's metrics: the last value seen is shown then.
                    if let Some(v) = r["latest"]["metrics"][m].as_f64() {
                        last_value = Some(v);
                    }
                    story.say(
                        "telemetry",
                        &format!(
                            "{instance}: {m} {}, failure probability {:.2}",
                            last_value.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}")),
                            p["failure_probability"].as_f64().unwrap_or(0.0)
                        ),
                    );
                }
            }
        }
        // The fleet's events, as the observer has them.
        if let Ok(page) = observer_api
            .get::<Page>("/v1/events", &[("since", &since.to_string())])
            .await
        {
            since = page.next;
            for e in &page.events {
                let at = ev_time(e);
                if let Some((tag, line)) = tell(e, &instance) {
                    story.say_at(at, tag, &line);
                }
                use augur_mesh::EventKind as K;
                match &e.event.kind {
                    K::PredictionAbove(_)
                        if e.event.resource_id.as_deref() == Some(instance.as_str())
                            && out.predicted_at_s.is_none() =>
                    {
                        out.predicted_at_s = Some(at);
                    }
                    K::MigrationStep(m)
                        if m.service == "demo" && out.migration_started_s.is_none() =>
                    {
                        out.migration_started_s = Some(at);
                        out.coordinator = e.event.node_name.clone();
                    }
                    K::MigrationFinished(m)
                        if m.service == "demo" && m.outcome.as_deref() == Some("completed") =>
                    {
                        out.migrations += 1;
                        if out.migration_done_s.is_none() {
                            out.migration_done_s = Some(at);
                            out.to = Some(m.to.clone());
                            done_at = Some(now);
                        }
                    }
                    _ => {}
                }
            }
        }
        // After the crash: another instance serving the load again.
        if crashed.is_some()
            && served_again.is_none()
            && let Some((id, node)) = routed_other(&observer_api, &instance).await
        {
            served_again = Some(now);
            out.to.get_or_insert(node.clone());
            story.say(
                "traffic",
                &format!(
                    "{}'s proxy routes to {id} on {node}",
                    fleet.nodes[observer].name
                ),
            );
        }
        story.status(format!(
            "requests {}  failed {}",
            load.total.load(Ordering::Relaxed),
            load.failed.load(Ordering::Relaxed)
        ));
        let settled = done_at.is_some_and(|d| now.duration_since(d) >= Duration::from_secs(3));
        let over = match o.fault {
            Fault::None => now >= hard_end,
            Fault::SuddenCrash => {
                (settled && crashed.is_some() && served_again.is_some()) || now >= hard_end
            }
            _ => {
                (settled
                    && failure_at.is_some_and(|f| {
                        now >= f.min(done_at.unwrap_or(f) + Duration::from_secs(5))
                    }))
                    || failure_at.is_some_and(|f| now >= f + Duration::from_secs(15))
                    || now >= hard_end
            }
        };
        if over {
            break;
        }
    }
    stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    out.requests_total = load.total.load(Ordering::Relaxed);
    out.requests_failed = load.failed.load(Ordering::Relaxed);
    // Served again: after the last request that failed (requests are sent every 1/rate s),
    // once another instance was routed to.
    out.served_again_after_s = match (crashed, served_again) {
        (Some(c), Some(_)) => {
            let last = (*load.last_failure.lock()).filter(|l| *l >= c);
            Some(last.map_or(0.0, |l| {
                l.duration_since(c).as_secs_f64() + 1.0 / f64::from(o.rate.max(1))
            }))
        }
        _ => None,
    };
    if o.fault == Fault::SuddenCrash {
        out.failure_at_s = crashed.map(t);
    }
    out.lead_time_s = match (out.failure_at_s, out.migration_done_s) {
        (Some(f), Some(d)) => Some(f - d),
        _ => None,
    };
    let moved = out.migration_done_s.is_some() || served_again.is_some();
    out.outcome = match (
        out.failure_at_s,
        out.migration_done_s.or(served_again.map(t)),
    ) {
        (Some(f), Some(d)) if d < f => "pre-empted",
        (Some(_), Some(_)) => "reactive",
        (Some(_), None) => "missed",
        (None, _) if moved => "false_migration",
        (None, _) => "none",
    }
    .to_owned();
    out.duration_s = start.elapsed().as_secs_f64();
    let failures = load.first_failures.lock().clone();
    out.first_failures = failures.clone();
    story.bar.finish_and_clear();
    story.say(
        "result",
        &format!(
            "{}: {} of {} requests failed{}{}",
            out.outcome,
            out.requests_failed,
            out.requests_total,
            out.lead_time_s
                .map(|l| format!("; moved {l:.1} s before the failure"))
                .unwrap_or_default(),
            if failures.is_empty() {
                String::new()
            } else {
                format!(" (first: {})", failures.join("; "))
            }
        ),
    );
    if o.keep {
        for n in &mut fleet.nodes {
            let _ = n.child.start_kill();
        }
        if let Some(dir) = fleet.dir.take() {
            out.folder = Some(dir.keep());
        }
    }
    Ok(out)
}
