//! The agent's side of the mesh: `augur fleet` (keys and tokens), starting the mesh from the
//! configuration, publishing this node's signed values, turning predictions that cross their
//! threshold into fleet events, and the event log that `/v1/events` and `augur events` read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use augur_mesh::admission::{FleetKey, FleetPublicKey, JoinToken, Trust};
use augur_mesh::libp2p::Multiaddr;
use augur_mesh::membership::{Clock, MembershipConfig};
use augur_mesh::values::{Capacity, Health, NodeValue, Placement};
use augur_mesh::{FleetEvent, Mesh, MeshConfig, NodeIdentity};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::cli::FleetCommand;
use crate::config::Config;
use crate::history::History;
use crate::models::ModelStore;
use crate::predict::Predictions;

/// `augur fleet ...`.
pub fn command(cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Init { out, json } => {
            let key = FleetKey::create(&out)?;
            let public = key.public().to_string();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"fleet_key_file": out, "fleet_public_key": public, "fleet_id": key.public().fleet_id()})
                );
            } else {
                println!(
                    "fleet key written to {} (keep it secret, and off the fleet's hosts)",
                    out.display()
                );
                println!("fleet public key: {public}");
                println!();
                println!("Every node trusts it:   [mesh] fleet_keys = [\"{public}\"]");
                println!(
                    "Each node needs a token: augur fleet token --fleet-key {} --peer-id <its PeerId>",
                    out.display()
                );
                println!(
                    "(a node prints its PeerId with `augur fleet peer-id --data-dir <its data dir>`)"
                );
            }
            Ok(())
        }
        FleetCommand::Token {
            fleet_key,
            peer_id,
            data_dir,
            ttl,
            json,
        } => {
            let key = FleetKey::load(&fleet_key)
                .with_context(|| "create one with `augur fleet init`".to_owned())?;
            let peer = match (peer_id, data_dir) {
                (Some(p), _) => p
                    .parse()
                    .with_context(|| format!("{p:?} is not a PeerId"))?,
                (None, Some(dir)) => {
                    std::fs::create_dir_all(&dir)?;
                    NodeIdentity::load_or_create(&dir)?.peer_id()
                }
                (None, None) => bail!("give the node's --peer-id, or its --data-dir"),
            };
            let expires = now_s() + ttl.as_secs();
            let token = key.issue(peer, expires);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"peer_id": peer.to_string(), "expires_unix_s": expires, "join_token": token.to_string(), "fleet_public_key": key.public().to_string()})
                );
            } else {
                println!("{token}");
            }
            Ok(())
        }
        FleetCommand::PeerId { data_dir, json } => {
            let dir = data_dir.unwrap_or_else(|| Config::default().data_dir());
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let id = NodeIdentity::load_or_create(&dir)?.peer_id();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"peer_id": id.to_string(), "data_dir": dir})
                );
            } else {
                println!("{id}");
            }
            Ok(())
        }
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn quic_addr(a: SocketAddr) -> Multiaddr {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => format!("/ip4/{v4}"),
        std::net::IpAddr::V6(v6) => format!("/ip6/{v6}"),
    };
    format!("{ip}/udp/{}/quic-v1", a.port())
        .parse()
        .unwrap_or_else(|_| Multiaddr::empty())
}

fn parse_fleet_keys(keys: &[String]) -> anyhow::Result<Vec<FleetPublicKey>> {
    keys.iter()
        .map(|k| k.parse())
        .collect::<Result<_, _>>()
        .context("mesh.fleet_keys")
}

/// Applies a reloaded `mesh.fleet_keys`: peers whose token no key trusts any longer are
/// disconnected within a second (see docs/ARCHITECTURE.md). Returns whether the keys changed.
pub fn reload_fleet_keys(mesh: &Mesh, keys: &[String]) -> anyhow::Result<bool> {
    let keys = parse_fleet_keys(keys)?;
    if *mesh.trust.keys() == keys {
        return Ok(false);
    }
    mesh.trust.set(keys);
    Ok(true)
}

/// Starts the mesh when the configuration holds a join token; `None` when it does not.
pub async fn start(
    cfg: &Config,
    identity: &NodeIdentity,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
) -> anyhow::Result<Option<Mesh>> {
    let m = &cfg.mesh;
    let token_text = match (&m.join_token, &m.join_token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read mesh.join_token_file {}", f.display()))?,
        (None, None) => return Ok(None),
    };
    let token: JoinToken = token_text
        .parse()
        .context("mesh.join_token is not a join token; issue one with `augur fleet token`")?;
    let trusted = parse_fleet_keys(&m.fleet_keys)?;
    token
        .verify(&identity.peer_id(), &trusted, now_s())
        .with_context(|| {
            format!(
                "this node ({}) cannot join the fleet with its token; issue it a new one with \
                 `augur fleet token --peer-id {}`",
                identity.peer_id(),
                identity.peer_id()
            )
        })?;
    let mut mc = MembershipConfig::new(m.fleet_name.clone(), m.gossip_addr);
    mc.advertise_addr = m.advertise_addr.unwrap_or(m.gossip_addr);
    mc.seeds = m.seeds.clone();
    mc.gossip_interval = m.gossip_interval;
    mc.phi_threshold = m.phi_threshold;
    mc.dead_node_grace = m.dead_node_grace;
    mc.max_nodes = m.max_members;
    // A peer that answered a ping within two ping intervals (and a second) is not dead.
    mc.ping_witness = m.ping_interval * 2 + Duration::from_secs(1);
    mc.generation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mesh = Mesh::start(
        identity.keypair().clone(),
        token,
        Trust::new(trusted),
        MeshConfig {
            membership: mc,
            p2p_listen: vec![quic_addr(m.p2p_addr)],
            admission_timeout: m.admission_timeout,
            ping_interval: m.ping_interval,
            api_http: Some(http_addr.to_string()),
            api_grpc: Some(grpc_addr.to_string()),
            memory: None,
        },
        Clock::system(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot start the mesh on {} (gossip) and {} (QUIC); set mesh.gossip_addr / mesh.p2p_addr",
            m.gossip_addr, m.p2p_addr
        )
    })?;
    Ok(Some(mesh))
}

/// One logged event with its index.
#[derive(Clone, Debug, Serialize)]
pub struct Logged {
    pub index: u64,
    #[serde(flatten)]
    pub event: FleetEvent,
}

/// The fleet events this agent has seen, numbered, the newest `capacity` kept. Subscribers resume
/// from an index and are told when events they asked for were already dropped.
#[derive(Clone, Debug)]
pub struct EventLog {
    inner: Arc<Mutex<LogInner>>,
    tx: broadcast::Sender<Logged>,
}

#[derive(Debug)]
struct LogInner {
    events: VecDeque<Logged>,
    next: u64,
    capacity: usize,
}

/// Events after an index.
#[derive(Debug, Serialize)]
pub struct Page {
    pub events: Vec<Logged>,
    /// Index to resume from.
    pub next: u64,
    /// Events after the requested index were dropped before they could be read.
    pub missed: u64,
}

/// Whether `topic` passes the filters (prefixes; none means all).
pub fn matches(topic: &str, filters: &[String]) -> bool {
    filters.is_empty()
        || filters
            .iter()
            .any(|f| topic == f || topic.starts_with(&format!("{f}.")) || f.is_empty())
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Mutex::new(LogInner {
                events: VecDeque::new(),
                next: 1,
                capacity: capacity.max(1),
            })),
            tx,
        }
    }

    pub fn push(&self, event: FleetEvent) -> u64 {
        let mut inner = self.inner.lock();
        let logged = Logged {
            index: inner.next,
            event,
        };
        inner.next += 1;
        inner.events.push_back(logged.clone());
        while inner.events.len() > inner.capacity {
            inner.events.pop_front();
        }
        // Sent under the lock, so a subscriber that read a page and then subscribed (also under
        // the lock) misses nothing and sees nothing twice.
        let _ = self.tx.send(logged.clone());
        logged.index
    }

    /// Events with index > `after` that match, and a subscription for what follows.
    pub fn since(&self, after: u64, topics: &[String]) -> (Page, broadcast::Receiver<Logged>) {
        let inner = self.inner.lock();
        let oldest = inner.events.front().map_or(inner.next, |e| e.index);
        // An index past the newest (a client resuming against a restarted agent) is "from now":
        // nothing was missed. `after + 1` wrapped for u64::MAX and reported one.
        let missed = oldest.saturating_sub(after.saturating_add(1));
        let events: Vec<Logged> = inner
            .events
            .iter()
            .filter(|e| e.index > after && matches(&e.event.topic, topics))
            .cloned()
            .collect();
        let page = Page {
            events,
            next: inner.next - 1,
            missed,
        };
        (page, self.tx.subscribe())
    }
}

/// What a follower receives: an event, or notice that `count` events after index `after` were
/// dropped before they could be delivered.
#[derive(Debug)]
pub enum Delivery {
    Event(Logged),
    Missed { count: u64, after: u64 },
}

impl EventLog {
    /// The matching events after `after` still buffered, then live ones as they come; a `Missed`
    /// first when the buffer no longer holds all of them, and whenever the follower falls behind.
    /// The one stream behind the SSE endpoint and gRPC `Subscribe`.
    pub fn follow(
        &self,
        after: u64,
        topics: Vec<String>,
    ) -> impl futures::Stream<Item = Delivery> + Send + 'static {
        use futures::StreamExt as _;
        let (page, rx) = self.since(after, &topics);
        let head = (page.missed > 0).then_some(Delivery::Missed {
            count: page.missed,
            after,
        });
        let backlog = page.events.into_iter().map(Delivery::Event);
        let live = futures::stream::unfold(
            (rx, topics, page.next),
            |(mut rx, topics, last)| async move {
                loop {
                    match rx.recv().await {
                        Ok(e) if e.index > last && matches(&e.event.topic, &topics) => {
                            let next = e.index;
                            return Some((Delivery::Event(e), (rx, topics, next)));
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let d = Delivery::Missed {
                                count: n,
                                after: last,
                            };
                            return Some((d, (rx, topics, last)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        );
        futures::stream::iter(head.into_iter().chain(backlog)).chain(live)
    }
}

/// Feeds the mesh's events into the log until shutdown.
pub fn spawn_pump(mesh: &Mesh, log: EventLog, shutdown: CancellationToken) {
    let mut rx = mesh.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                ev = rx.recv() => match ev {
                    Ok(e) => { log.push(e); }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(dropped = n, "fleet event log fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
}

/// Every few seconds: publishes this node's health, capacity, placement and model versions, and
/// turns predictions crossing their threshold (either way) into fleet events. Without a mesh the
/// events still reach the local log.
#[allow(clippy::too_many_arguments)]
pub fn spawn_publisher(
    mesh: Option<Mesh>,
    log: EventLog,
    predictions: Predictions,
    history: History,
    models: ModelStore,
    config: watch::Receiver<Arc<Config>>,
    node_name: String,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut above: HashMap<String, bool> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let self_id = mesh
            .as_ref()
            .map(|m| m.peer_id().to_string())
            .unwrap_or_default();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let all = predictions.all();
            for p in &all {
                let id = p.resource_id.to_string();
                let was = above.insert(id.clone(), p.above_threshold).unwrap_or(false);
                if was != p.above_threshold {
                    let event = FleetEvent {
                        topic: if p.above_threshold {
                            "prediction.above_threshold".to_owned()
                        } else {
                            "prediction.below_threshold".to_owned()
                        },
                        ts_ms: (p.ts.0 / 1000).max(0) as u64,
                        peer_id: self_id.clone(),
                        node_name: Some(node_name.clone()),
                        resource_id: Some(id),
                        origin: self_id.clone(),
                        detail: serde_json::json!({
                            "failure_probability": p.prediction.failure_probability,
                            "threshold": p.threshold,
                            "eta_s": p.prediction.eta_s,
                            "drivers": p.prediction.drivers,
                            "model_version": p.prediction.model_version,
                        }),
                    };
                    tracing::info!(topic = %event.topic, resource_id = ?event.resource_id, "fleet event");
                    match &mesh {
                        Some(m) => m.publish_event(event).await,
                        None => {
                            log.push(event);
                        }
                    }
                }
            }
            let Some(mesh) = &mesh else { continue };
            let riskiest = all.first();
            mesh.publish_value(NodeValue::Health(Health {
                max_failure_probability: riskiest.map_or(0.0, |p| p.prediction.failure_probability),
                resource_id: riskiest.map(|p| p.resource_id.to_string()),
                anomaly_score: all
                    .iter()
                    .map(|p| p.prediction.anomaly_score)
                    .fold(0.0, f64::max),
                above_threshold: all.iter().any(|p| p.above_threshold),
            }));
            if let Some(host) = history
                .resources()
                .into_iter()
                .find(|r| r.resource_id.as_str() == node_name)
                .and_then(|r| r.latest)
            {
                let m = &host.metrics;
                let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
                mesh.publish_value(NodeValue::Capacity(Capacity {
                    cpu_free: (1.0 - get("cpu_util")).clamp(0.0, 1.0),
                    mem_free_bytes: get("mem_available_bytes").max(0.0) as u64,
                    disk_free_bytes: get("disk_free_bytes_min").max(0.0) as u64,
                }));
            }
            // The workloads this node hosts: every resource it tracks that is not the host itself.
            let mut services: Vec<String> = history
                .resources()
                .into_iter()
                .filter(|r| r.meta.resource_type.as_str() != augur_proto::HOST_RESOURCE_TYPE)
                .map(|r| r.resource_id.to_string())
                .collect();
            services.sort();
            services.truncate(256);
            mesh.publish_value(NodeValue::Services(services));
            let cfg = config.borrow().clone();
            mesh.publish_value(NodeValue::Placement(Placement {
                node_name: node_name.clone(),
                zone: cfg.mesh.zone.clone(),
                labels: cfg.mesh.labels.clone(),
            }));
            let versions: BTreeMap<String, String> = models
                .all()
                .into_iter()
                .map(|m| (m.resource_type.clone(), format!("v{}", m.version)))
                .collect();
            mesh.publish_value(NodeValue::Models(versions));
        }
    });
}

/// `augur events`.
pub async fn events_command(
    api: &str,
    follow: bool,
    topics: &[String],
    since: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut url = reqwest::Url::parse(api)
        .with_context(|| format!("--api {api:?} is not a URL"))?
        .join("/v1/events")?;
    {
        let mut q = url.query_pairs_mut();
        for t in topics {
            q.append_pair("topic", t);
        }
        if let Some(s) = since {
            q.append_pair("since", &s.to_string());
        }
        if follow {
            q.append_pair("follow", "true");
        }
    }
    let client = reqwest::Client::builder().no_proxy().build()?;
    let resp = client.get(url.clone()).send().await.with_context(|| {
        format!("cannot reach the augur agent at {url}: is it running (`augur agent`) and is --api right?")
    })?;
    if !resp.status().is_success() {
        bail!("{url}: {}", resp.status());
    }
    let print = |v: &serde_json::Value| {
        if json {
            println!("{v}");
        } else {
            let who = v["node_name"]
                .as_str()
                .unwrap_or_else(|| v["peer_id"].as_str().unwrap_or(""));
            let res = v["resource_id"]
                .as_str()
                .map(|r| format!(" {r}"))
                .unwrap_or_default();
            println!(
                "#{:<6} {:<28} {who}{res}",
                v["index"],
                v["topic"].as_str().unwrap_or("")
            );
        }
    };
    if !follow {
        let page: serde_json::Value = resp.json().await?;
        if page["missed"].as_u64().unwrap_or(0) > 0 && !json {
            eprintln!(
                "({} earlier events were dropped from the agent's buffer)",
                page["missed"]
            );
        }
        for e in page["events"].as_array().into_iter().flatten() {
            print(e);
        }
        return Ok(());
    }
    // Server-sent events: "event:", "id:" and "data:" lines, a blank line ends one.
    use futures::StreamExt as _;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut kind = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            let line = line.trim_end();
            if let Some(k) = line.strip_prefix("event:") {
                kind = k.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                let v: serde_json::Value = serde_json::from_str(d.trim()).unwrap_or_default();
                if kind == "missed" {
                    if json {
                        println!("{v}");
                    } else {
                        eprintln!(
                            "({} events were dropped before they could be sent)",
                            v["missed"]
                        );
                    }
                } else {
                    print(&v);
                }
            } else if line.is_empty() {
                kind.clear();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str) -> FleetEvent {
        FleetEvent {
            topic: topic.to_owned(),
            ts_ms: 0,
            peer_id: "p".into(),
            node_name: None,
            resource_id: None,
            origin: "p".into(),
            detail: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_log_resumes_filters_and_reports_what_was_dropped() {
        let log = EventLog::new(3);
        for t in [
            "member.joined",
            "prediction.above_threshold",
            "member.dead",
            "member.recovered",
        ] {
            log.push(event(t));
        }
        // Index 1 was dropped (capacity 3).
        let (page, _) = log.since(0, &[]);
        assert_eq!(page.missed, 1);
        assert_eq!(
            page.events.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(page.next, 4);
        let (page, _) = log.since(2, &["member".to_owned()]);
        assert_eq!(page.missed, 0);
        assert_eq!(
            page.events
                .iter()
                .map(|e| e.event.topic.as_str())
                .collect::<Vec<_>>(),
            vec!["member.dead", "member.recovered"]
        );
        assert!(matches("member.dead", &["member.dead".to_owned()]));
        assert!(!matches("membership.x", &["member".to_owned()]));
        let (_, mut rx) = log.since(4, &[]);
        log.push(event("member.left"));
        assert_eq!(rx.try_recv().map(|l| l.index).ok(), Some(5));
        // An index past the newest, up to u64::MAX, misses nothing and lists nothing.
        for after in [6, u64::MAX - 1, u64::MAX] {
            let (page, _) = log.since(after, &[]);
            assert_eq!(
                (page.missed, page.events.len(), page.next),
                (0, 0, 5),
                "{after}"
            );
        }
    }

    #[tokio::test]
    async fn a_follower_gets_the_missed_notice_the_backlog_then_live_events() {
        use futures::StreamExt as _;
        let log = EventLog::new(2);
        for t in ["member.joined", "member.dead", "prediction.above_threshold"] {
            log.push(event(t));
        }
        let mut s = Box::pin(log.follow(0, vec!["member".to_owned()]));
        assert!(matches!(
            s.next().await,
            Some(Delivery::Missed { count: 1, after: 0 })
        ));
        assert!(matches!(s.next().await, Some(Delivery::Event(e)) if e.index == 2));
        log.push(event("prediction.below_threshold"));
        log.push(event("member.recovered"));
        assert!(matches!(s.next().await, Some(Delivery::Event(e)) if e.index == 5));
    }
}
