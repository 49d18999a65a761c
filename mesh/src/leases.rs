//! Leases over the mesh: this node's lease voter, answering admitted peers over
//! `/augur/lease/1`, and the acquisitions it makes itself, each a [`Proposer`] machine in a task
//! that sends its requests over libp2p (to itself directly), keeps its timers on tokio's clock,
//! renews the lease while held and gives it back when told. The rules are
//! `augur_orchestrate::lease`'s; what is here is I/O.
//!
//! The voter set, budget and lease duration come from the signed fleet document (the agent's
//! catalog hands it in through a `watch`); with none, this node votes for nothing and asks for
//! nothing. What the voter promises or accepts is saved through a [`VoterStore`] before the reply
//! leaves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use augur_orchestrate::Machine;
use augur_orchestrate::fleet::LeaseSettings;
use augur_orchestrate::lease::proposer::{self, Failure, Proposer, Settings, Want};
use augur_orchestrate::lease::voter::{self, Voter, VoterState};
use augur_orchestrate::lease::wire::{Open, Reply, Request};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::act::{ActReply, ActRequest, Assignment, Trend};
use crate::swarm::SwarmHandle;
use crate::tasks::Tasks;

/// Where a voter's state is kept between runs.
pub trait VoterStore: Send + Sync + 'static {
    fn load(&self) -> std::io::Result<Option<VoterState>>;
    /// Durably: the voter answers only after this returns.
    fn save(&self, state: &VoterState) -> std::io::Result<()>;
}

/// Where assignments from lease holders go (the agent's runtime follows them).
pub trait AssignStore: Send + Sync + 'static {
    /// Takes `a` from `from` (persisted before this returns), or says why not: an epoch below
    /// the fence, or an older change than held.
    fn offer(&self, from: &PeerId, a: Assignment) -> Result<(), String>;
    /// The latest assignment of `service` held.
    fn latest(&self, service: &str) -> Option<Assignment>;
}

/// Where a node's recent telemetry comes from when a peer asks for a resource's trend.
pub trait TrendSource: Send + Sync + 'static {
    fn trend(&self, resource_id: &str) -> Option<Trend>;
}

/// Where a node's current model updates come from when a peer asks (their signed wire form).
pub trait ModelSource: Send + Sync + 'static {
    fn model(&self, resource_type: &str) -> Option<Vec<u8>>;
}

/// A store in memory (the simulation's "disk": it survives a simulated restart when kept).
#[derive(Debug, Default)]
pub struct MemoryVoterStore(Mutex<Option<VoterState>>);

impl VoterStore for MemoryVoterStore {
    fn load(&self) -> std::io::Result<Option<VoterState>> {
        Ok(self.0.lock().clone())
    }

    fn save(&self, state: &VoterState) -> std::io::Result<()> {
        *self.0.lock() = Some(state.clone());
        Ok(())
    }
}

/// The fleet document's part that leases use, with its version.
pub type LeaseConfig = Option<(u64, LeaseSettings)>;

/// How long this node waits for a majority before asking again, and how many rounds it tries.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
pub const ATTEMPTS: u32 = 3;

/// Counters of leases.
#[derive(Debug, Default)]
pub struct LeaseStats {
    /// Requests this node's voter answered, and those it refused (a subset).
    pub votes: AtomicU64,
    pub votes_refused: AtomicU64,
    /// Votes not given because the voter's state could not be saved.
    pub store_errors: AtomicU64,
    pub acquired: AtomicU64,
    pub refused: AtomicU64,
    pub renewed: AtomicU64,
    pub lost: AtomicU64,
    /// Messages and bytes (CBOR) this node sent for its own leases.
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
}

/// A lease this node holds, as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLease {
    pub lease_id: u64,
    pub service: String,
    pub epoch: u64,
    pub keys: Vec<String>,
    pub note: String,
}

/// What this node's leases look like, for `/v1/leases`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub peer_id: String,
    /// The fleet document's version and lease settings (none: leases are off).
    pub config_version: Option<u64>,
    pub settings: Option<LeaseSettings>,
    /// Whether this node is one of the voters.
    pub voter: bool,
    /// Leases open in this node's voter.
    pub open: Vec<Open>,
    /// Leases this node holds.
    pub held: Vec<HeldLease>,
}

struct Inner {
    me: PeerId,
    swarm: SwarmHandle,
    voter: Mutex<Voter>,
    store: Arc<dyn VoterStore>,
    base: Instant,
    config: watch::Receiver<LeaseConfig>,
    nonce: u64,
    next_lease: AtomicU64,
    /// The highest epoch this node has seen won, to start its rounds above it.
    highest: AtomicU64,
    held: Mutex<BTreeMap<u64, HeldLease>>,
    stats: LeaseStats,
    tasks: Tasks,
    assignments: Option<Arc<dyn AssignStore>>,
    trends: std::sync::OnceLock<Arc<dyn TrendSource>>,
    models: std::sync::OnceLock<Arc<dyn ModelSource>>,
}

/// A peer's clock against this node's ([`Leases::clock_offset`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockOffset {
    /// The peer's clock minus this node's (milliseconds; positive: the peer is ahead).
    pub offset_ms: f64,
    /// The round trip it was measured over; the offset is right within half of it.
    pub rtt_ms: f64,
}

/// This node's leases. Cloneable handle.
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("me", &self.inner.me)
            .finish()
    }
}

/// A lease held: its epoch while held (`None` once lost or released).
#[derive(Debug)]
pub struct Lease {
    pub lease_id: u64,
    pub keys: Vec<String>,
    epoch: watch::Receiver<Option<u64>>,
    release: Option<oneshot::Sender<bool>>,
    done: Option<oneshot::Receiver<()>>,
}

impl Lease {
    /// The epoch every action under this lease carries; `None` once it is lost: stop acting.
    pub fn epoch(&self) -> Option<u64> {
        *self.epoch.borrow()
    }

    /// Resolves when the lease is lost (not renewed in time) or given back.
    pub async fn lost(&mut self) {
        let _ = self.epoch.wait_for(Option::is_none).await;
    }

    /// Gives the lease back (`moved`: the service moved, so its hold-down starts) and waits
    /// until the voters were told (or could not be).
    pub async fn release(mut self, moved: bool) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(moved);
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Dropped without a release: give it back as "not moved" (its task sees the sender go).
        if let Some(tx) = self.release.take() {
            let _ = tx.send(false);
        }
    }
}

fn now(base: Instant) -> Duration {
    Instant::now().saturating_duration_since(base)
}

fn cbor_len<T: Serialize>(v: &T) -> u64 {
    let mut out = Vec::new();
    let _ = ciborium::into_writer(v, &mut out);
    out.len() as u64
}

impl Leases {
    /// Starts this node's voter (from what `store` kept) on `tasks`.
    pub fn start(
        swarm: SwarmHandle,
        store: Arc<dyn VoterStore>,
        config: watch::Receiver<LeaseConfig>,
        nonce: u64,
        assignments: Option<Arc<dyn AssignStore>>,
        tasks: &Tasks,
    ) -> Self {
        let base = Instant::now();
        let saved = store.load().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the lease voter's state cannot be read; starting empty");
            None
        });
        let (version, hold_down) = match &*config.borrow() {
            Some((v, s)) => (*v, s.hold_down),
            None => (0, Duration::ZERO),
        };
        let voter = Voter::restore(
            saved.unwrap_or_default(),
            version,
            hold_down,
            Duration::ZERO,
        );
        let inner = Arc::new(Inner {
            me: swarm.peer_id,
            swarm: swarm.clone(),
            voter: Mutex::new(voter),
            store,
            base,
            config,
            nonce,
            next_lease: AtomicU64::new(1),
            highest: AtomicU64::new(0),
            held: Mutex::default(),
            stats: LeaseStats::default(),
            tasks: tasks.clone(),
            assignments,
            trends: std::sync::OnceLock::new(),
            models: std::sync::OnceLock::new(),
        });
        let leases = Self { inner };
        if let Some(inbox) = swarm.take_lease_inbox() {
            tasks.spawn(
                "mesh.lease_voter",
                leases.clone().serve(inbox, tasks.clone()),
            );
        }
        leases
    }

    pub fn stats(&self) -> &LeaseStats {
        &self.inner.stats
    }

    /// Answers peers' requests until the mesh stops; follows the fleet document.
    async fn serve(self, mut inbox: mpsc::Receiver<crate::swarm::LeaseInbound>, tasks: Tasks) {
        let mut config = self.inner.config.clone();
        loop {
            tokio::select! {
                () = tasks.stopped() => return,
                changed = config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let c = config.borrow_and_update().clone();
                    if let Some((version, s)) = c {
                        let ev = voter::Event::Config { version, hold_down: s.hold_down };
                        self.inner.voter.lock().on_event(ev, now(self.inner.base));
                    }
                }
                req = inbox.recv() => {
                    let Some(req) = req else { return };
                    let reply = match req.request {
                        ActRequest::Lease(r) => self.vote(&req.from.to_string(), r).map(ActReply::Lease),
                        ActRequest::Assign(a) => Some(ActReply::Assign(self.take(&req.from, a))),
                        ActRequest::Latest { service } => Some(ActReply::Latest(
                            self.inner.assignments.as_ref().and_then(|s| s.latest(&service)),
                        )),
                        ActRequest::Trend { resource_id } => Some(ActReply::Trend(
                            self.inner.trends.get().and_then(|t| t.trend(&resource_id)),
                        )),
                        ActRequest::Time => Some(ActReply::Time {
                            unix_ms: self.inner.tasks.clock().now_ms(),
                        }),
                        ActRequest::Models { resource_type } => Some(ActReply::Models(
                            self.inner
                                .models
                                .get()
                                .and_then(|m| m.model(&resource_type))
                                .map(crate::act::WireBytes),
                        )),
                    };
                    if let Some(reply) = reply {
                        self.inner.swarm.answer_lease(req.id, reply).await;
                    }
                }
            }
        }
    }

    /// This node's voter's answer to `request` from `from` (none when it cannot save, or when
    /// this node is not a voter of the fleet document it holds).
    fn vote(&self, from: &str, request: Request) -> Option<Reply> {
        let me = self.inner.me.to_string();
        let is_voter = self
            .inner
            .config
            .borrow()
            .as_ref()
            .is_some_and(|(_, s)| s.voters.contains(&me));
        if !is_voter {
            return None;
        }
        let mut voter = self.inner.voter.lock();
        let actions = voter.on_event(
            voter::Event::Request {
                from: from.to_owned(),
                id: 0,
                request,
            },
            now(self.inner.base),
        );
        for a in actions {
            match a {
                voter::Action::Persist(state) => {
                    if let Err(e) = self.inner.store.save(&state) {
                        self.inner
                            .stats
                            .store_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "the lease voter's state cannot be saved; not answering");
                        return None;
                    }
                }
                voter::Action::Reply { reply, .. } => {
                    self.inner.stats.votes.fetch_add(1, Ordering::Relaxed);
                    if matches!(reply, Reply::Refused { .. }) {
                        self.inner
                            .stats
                            .votes_refused
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return Some(reply);
                }
            }
        }
        None
    }

    /// An assignment from `from`, for this node's store.
    fn take(&self, from: &PeerId, a: Assignment) -> Result<(), String> {
        a.validate()?;
        match &self.inner.assignments {
            Some(store) => store.offer(from, a),
            None => Err("this node takes no assignments".into()),
        }
    }

    /// Sends `a` to each of `peers` (this node's own store directly) and returns each one's
    /// answer (an unreachable peer's is an error).
    pub async fn assign(
        &self,
        peers: &[PeerId],
        a: &Assignment,
    ) -> Vec<(PeerId, Result<(), String>)> {
        let me = self.inner.me;
        let sends = peers.iter().map(|p| {
            let (p, a) = (*p, a.clone());
            let swarm = self.inner.swarm.clone();
            let leases = self.clone();
            async move {
                if p == me {
                    return (p, leases.take(&me, a));
                }
                let r = match swarm.lease_request(p, ActRequest::Assign(a)).await {
                    Ok(ActReply::Assign(r)) => r,
                    Ok(_) => Err("answered with another kind of reply".into()),
                    Err(e) => Err(e.to_string()),
                };
                (p, r)
            }
        });
        futures::future::join_all(sends).await
    }

    /// The latest assignment of `service` among those a majority of the lease voters hold (the
    /// highest `(epoch, seq)` of the answers), once a majority answered; `Err` with how many did
    /// when no majority did. Every assignment a coordinator went on from was taken by a majority
    /// of the voters, so any majority's answers include the last of them.
    pub async fn latest(&self, service: &str) -> Result<Option<Assignment>, (usize, usize)> {
        let voters: Vec<String> = self
            .inner
            .config
            .borrow()
            .as_ref()
            .map(|(_, s)| s.voters.clone())
            .unwrap_or_default();
        let me = self.inner.me;
        let asks = voters
            .iter()
            .filter_map(|v| v.parse::<PeerId>().ok())
            .map(|p| {
                let swarm = self.inner.swarm.clone();
                let local = self.inner.assignments.clone();
                let service = service.to_owned();
                async move {
                    if p == me {
                        return Some(local.as_ref().and_then(|s| s.latest(&service)));
                    }
                    match swarm.lease_request(p, ActRequest::Latest { service }).await {
                        Ok(ActReply::Latest(a)) => Some(a.filter(|a| a.validate().is_ok())),
                        _ => None,
                    }
                }
            });
        let answers: Vec<Option<Assignment>> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if voters.is_empty() || answers.len() <= voters.len() / 2 {
            return Err((answers.len(), voters.len()));
        }
        Ok(answers
            .into_iter()
            .flatten()
            .filter(|a| a.service == service)
            .max_by_key(|a| (a.epoch, a.seq)))
    }

    /// Where this node's model updates come from when a peer asks (set once).
    pub fn set_models(&self, source: Arc<dyn ModelSource>) {
        let _ = self.inner.models.set(source);
    }

    /// Asks `peer` for its current model update of `resource_type` (its signed wire form; the
    /// caller opens it with `crate::model_updates::open`).
    pub async fn model(
        &self,
        peer: PeerId,
        resource_type: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let request = ActRequest::Models {
            resource_type: resource_type.to_owned(),
        };
        match self.inner.swarm.lease_request(peer, request).await {
            Ok(ActReply::Models(m)) => Ok(m.map(|b| b.0)),
            Ok(_) => Err("answered with another kind of reply".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Where this node's trends come from when a peer asks (set once).
    pub fn set_trends(&self, source: Arc<dyn TrendSource>) {
        let _ = self.inner.trends.set(source);
    }

    /// Asks `peer` for the recent samples of `resource_id` (a witness's evidence).
    pub async fn trend(&self, peer: PeerId, resource_id: &str) -> Result<Option<Trend>, String> {
        let request = ActRequest::Trend {
            resource_id: resource_id.to_owned(),
        };
        match self.inner.swarm.lease_request(peer, request).await {
            Ok(ActReply::Trend(Some(t))) => {
                t.validate()?;
                Ok(Some(t))
            }
            Ok(ActReply::Trend(None)) => Ok(None),
            Ok(_) => Err("answered with another kind of reply".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// This node's clock against `peer`'s, measured as NTP does with one exchange: the peer's
    /// time when it answered minus this node's at the middle of the round trip. The error is at
    /// most half the round trip.
    pub async fn clock_offset(&self, peer: PeerId) -> Result<ClockOffset, String> {
        let clock = self.inner.tasks.clock();
        let sent_ms = clock.now_ms();
        let start = Instant::now();
        let reply = self.inner.swarm.lease_request(peer, ActRequest::Time).await;
        let rtt = start.elapsed();
        match reply {
            Ok(ActReply::Time { unix_ms }) => {
                let middle = sent_ms as f64 + rtt.as_secs_f64() * 500.0;
                Ok(ClockOffset {
                    offset_ms: unix_ms as f64 - middle,
                    rtt_ms: rtt.as_secs_f64() * 1000.0,
                })
            }
            Ok(_) => Err("answered with another kind of reply".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The lease voters (peer ids) of the fleet document this node holds.
    pub fn voters(&self) -> Vec<String> {
        self.inner
            .config
            .borrow()
            .as_ref()
            .map(|(_, s)| s.voters.clone())
            .unwrap_or_default()
    }

    /// The state of this node's leases.
    pub fn view(&self) -> LeaseView {
        let config = self.inner.config.borrow().clone();
        let me = self.inner.me.to_string();
        LeaseView {
            voter: config.as_ref().is_some_and(|(_, s)| s.voters.contains(&me)),
            peer_id: me,
            config_version: config.as_ref().map(|(v, _)| *v),
            settings: config.map(|(_, s)| s),
            open: self.inner.voter.lock().open(now(self.inner.base)),
            held: self.inner.held.lock().values().cloned().collect(),
        }
    }

    /// Asks the voters for the lease on moving `service` (from `zone`, whose budget applies);
    /// returns once it is held or refused. While held it is renewed; drop or release it to give
    /// it back.
    pub async fn acquire(
        &self,
        service: &str,
        zone: Option<&str>,
        note: &str,
    ) -> Result<Lease, Failure> {
        self.acquire_as(service, zone, note, None).await
    }

    /// [`Leases::acquire`], under a given lease id: a node that restarted while holding a lease
    /// takes it back under the id it had (the voters see its own lease, not someone else's, and
    /// its hold-down does not apply to it). A new id is unique across restarts (it carries the
    /// start's nonce).
    pub async fn acquire_as(
        &self,
        service: &str,
        zone: Option<&str>,
        note: &str,
        lease_id: Option<u64>,
    ) -> Result<Lease, Failure> {
        let Some((version, settings)) = self.inner.config.borrow().clone() else {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::Unconfigured);
        };
        let lease_id = lease_id.unwrap_or_else(|| {
            (self.inner.nonce << 32) | self.inner.next_lease.fetch_add(1, Ordering::Relaxed)
        });
        let machine = Proposer::new(
            Settings {
                me: self.inner.me.to_string(),
                nonce: self.inner.nonce,
                voters: settings.voters.clone(),
                config: version,
                fleet_slots: settings.max_migrations,
                zone_slots: settings.max_migrations_per_zone,
                reply_timeout: REPLY_TIMEOUT,
                attempts: ATTEMPTS,
            },
            Want {
                service: service.to_owned(),
                zone: zone.map(str::to_owned),
                duration: settings.duration,
                lease_id,
                note: note.to_owned(),
            },
            self.inner.highest.load(Ordering::Relaxed),
        );
        let (tx_won, rx_won) = oneshot::channel();
        let (tx_epoch, rx_epoch) = watch::channel(None);
        let (tx_release, rx_release) = oneshot::channel();
        let (tx_done, rx_done) = oneshot::channel();
        let run = Run {
            leases: self.clone(),
            machine,
            lease_id,
            service: service.to_owned(),
            note: note.to_owned(),
            tx_won: Some(tx_won),
            tx_epoch,
            tx_done,
        };
        self.inner
            .tasks
            .spawn("mesh.lease", run.run(rx_release, self.inner.tasks.clone()));
        match rx_won.await {
            Ok(Ok(keys)) => Ok(Lease {
                lease_id,
                keys,
                epoch: rx_epoch,
                release: Some(tx_release),
                done: Some(rx_done),
            }),
            Ok(Err(f)) => Err(f),
            // The mesh stopped while asking.
            Err(_) => Err(Failure::NoMajority {
                heard: 0,
                voters: settings.voters.len(),
            }),
        }
    }
}

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = (String, Option<Reply>)> + Send>>;

/// One acquisition's task.
struct Run {
    leases: Leases,
    machine: Proposer,
    lease_id: u64,
    service: String,
    note: String,
    tx_won: Option<oneshot::Sender<Result<Vec<String>, Failure>>>,
    tx_epoch: watch::Sender<Option<u64>>,
    tx_done: oneshot::Sender<()>,
}

impl Run {
    async fn run(mut self, mut rx_release: oneshot::Receiver<bool>, tasks: Tasks) {
        let inner = self.leases.inner.clone();
        let mut timers: BTreeMap<(Duration, u64), ()> = BTreeMap::new();
        let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mut released = false;
        let first = self
            .machine
            .on_event(proposer::Event::Start, now(inner.base));
        self.apply(first, &mut timers, &mut inflight);
        while !self.machine.is_done() {
            let next = timers.keys().next().copied();
            let event = tokio::select! {
                () = tasks.stopped() => proposer::Event::Release { moved: false },
                Some((from, reply)) = inflight.next(), if !inflight.is_empty() => match reply {
                    Some(reply) => proposer::Event::Reply { from, reply },
                    None => continue,
                },
                () = async {
                    match next {
                        Some((at, _)) => tokio::time::sleep_until(inner.base + at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let (at, id) = next.expect("a timer was due");
                    timers.remove(&(at, id));
                    proposer::Event::Timer(id)
                }
                moved = &mut rx_release, if !released => {
                    released = true;
                    proposer::Event::Release { moved: moved.unwrap_or(false) }
                }
            };
            let actions = self.machine.on_event(event, now(inner.base));
            self.apply(actions, &mut timers, &mut inflight);
        }
        // Releases were sent: let them go out (each bounded by the request timeout).
        while inflight.next().await.is_some() {}
        inner.held.lock().remove(&self.lease_id);
        let _ = self.tx_done.send(());
    }

    fn apply(
        &mut self,
        actions: Vec<proposer::Action>,
        timers: &mut BTreeMap<(Duration, u64), ()>,
        inflight: &mut FuturesUnordered<Pending>,
    ) {
        let inner = self.leases.inner.clone();
        for a in actions {
            match a {
                proposer::Action::Send { to, request } => {
                    inner.stats.messages.fetch_add(1, Ordering::Relaxed);
                    inner
                        .stats
                        .bytes
                        .fetch_add(cbor_len(&request), Ordering::Relaxed);
                    if to == inner.me.to_string() {
                        let reply = self.leases.vote(&to, request);
                        inflight.push(Box::pin(async move { (to, reply) }));
                        continue;
                    }
                    let Ok(peer) = to.parse::<PeerId>() else {
                        tracing::warn!(voter = %to, "a lease voter in the fleet document is not a peer id");
                        continue;
                    };
                    let swarm = inner.swarm.clone();
                    let stats = self.leases.clone();
                    inflight.push(Box::pin(async move {
                        match swarm.lease_request(peer, ActRequest::Lease(request)).await {
                            Ok(ActReply::Lease(reply)) => {
                                let s = &stats.inner.stats;
                                s.messages.fetch_add(1, Ordering::Relaxed);
                                s.bytes.fetch_add(cbor_len(&reply), Ordering::Relaxed);
                                (to, Some(reply))
                            }
                            Ok(_) => (to, None),
                            Err(e) => {
                                tracing::debug!(error = %e, "lease request without a reply");
                                (to, None)
                            }
                        }
                    }));
                }
                proposer::Action::Timer { at, id } => {
                    timers.insert((at, id), ());
                }
                proposer::Action::Acquired { epoch, keys, .. } => {
                    inner.stats.acquired.fetch_add(1, Ordering::Relaxed);
                    inner.highest.fetch_max(epoch, Ordering::Relaxed);
                    inner.held.lock().insert(
                        self.lease_id,
                        HeldLease {
                            lease_id: self.lease_id,
                            service: self.service.clone(),
                            epoch,
                            keys: keys.clone(),
                            note: self.note.clone(),
                        },
                    );
                    let _ = self.tx_epoch.send(Some(epoch));
                    if let Some(tx) = self.tx_won.take() {
                        let _ = tx.send(Ok(keys));
                    }
                }
                proposer::Action::Renewed { epoch, .. } => {
                    inner.stats.renewed.fetch_add(1, Ordering::Relaxed);
                    inner.highest.fetch_max(epoch, Ordering::Relaxed);
                    if let Some(h) = inner.held.lock().get_mut(&self.lease_id) {
                        h.epoch = epoch;
                    }
                    let _ = self.tx_epoch.send(Some(epoch));
                }
                proposer::Action::Refused(f) => {
                    inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(service = %self.service, reason = %f, "lease refused");
                    if let Some(tx) = self.tx_won.take() {
                        let _ = tx.send(Err(f));
                    }
                }
                proposer::Action::Lost => {
                    inner.stats.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(service = %self.service, "lease lost: not renewed in time");
                    inner.held.lock().remove(&self.lease_id);
                    let _ = self.tx_epoch.send(None);
                }
                proposer::Action::Released => {
                    inner.held.lock().remove(&self.lease_id);
                    let _ = self.tx_epoch.send(None);
                    if let Some(tx) = self.tx_won.take() {
                        let _ = tx.send(Err(Failure::NoMajority {
                            heard: 0,
                            voters: 0,
                        }));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests_support {
    pub(super) use super::tests::fleet_with_leases;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimConfig, SimFleet};

    const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

    pub(super) async fn fleet_with_leases(
        seed: u64,
        duration: Duration,
    ) -> (
        SimFleet,
        BTreeMap<&'static str, Leases>,
        watch::Sender<LeaseConfig>,
    ) {
        let mut fleet = SimFleet::new(seed, SimConfig::default());
        fleet.join_all(NAMES).await;
        fleet.converge().await.expect("converges");
        fleet
            .until(Duration::from_secs(60), |f| {
                NAMES
                    .iter()
                    .all(|x| NAMES.iter().all(|y| x == y || f.connected(x, y)))
            })
            .await
            .expect("every pair connected and admitted");
        let settings = LeaseSettings {
            voters: NAMES.iter().map(|n| fleet.peer_id(n)).collect(),
            max_migrations: 1,
            max_migrations_per_zone: 1,
            hold_down: Duration::from_secs(2),
            duration,
        };
        let (tx, rx) = watch::channel(Some((1, settings)));
        let tasks = Tasks::default();
        let leases = NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let l = Leases::start(
                    fleet.mesh(n).swarm.clone(),
                    Arc::new(MemoryVoterStore::default()),
                    rx.clone(),
                    i as u64 + 100,
                    None,
                    &tasks,
                );
                (*n, l)
            })
            .collect();
        (fleet, leases, tx)
    }

    #[tokio::test(start_paused = true)]
    async fn one_holder_at_a_time_and_a_minority_partition_gets_nothing() {
        let (fleet, leases, _config) = fleet_with_leases(41, Duration::from_secs(10)).await;
        let mut lease = leases["a"]
            .acquire("web", Some("z1"), "move web")
            .await
            .expect("a wins the lease");
        let first = lease.epoch().expect("held");
        assert_eq!(leases["a"].view().held.len(), 1);
        // The same service is busy; another service finds the fleet's budget (1) spent.
        let e = leases["b"]
            .acquire("web", None, "")
            .await
            .expect_err("busy");
        assert!(matches!(e, Failure::Busy { .. }), "{e}");
        let e = leases["c"]
            .acquire("api", None, "")
            .await
            .expect_err("budget");
        assert!(matches!(e, Failure::Budget { .. }), "{e}");
        assert!(e.is_conflict());
        // Held for longer than its duration: renewed, each time under a higher epoch.
        fleet.run_for(Duration::from_secs(30)).await;
        let renewed = lease.epoch().expect("still held");
        assert!(renewed > first, "{renewed} > {first}");
        assert!(leases["a"].stats().renewed.load(Ordering::Relaxed) >= 3);

        // a and b are cut off from the majority: a cannot renew, so its lease ends on its own
        // clock; nothing on the minority side can win one.
        fleet.partition(&["a", "b"], &["c", "d", "e"]).await;
        tokio::time::timeout(Duration::from_secs(11), lease.lost())
            .await
            .expect("a's lease ends within its duration");
        assert_eq!(lease.epoch(), None);
        let e = leases["b"]
            .acquire("web", None, "")
            .await
            .expect_err("minority");
        assert!(matches!(e, Failure::NoMajority { .. }), "{e}");
        assert!(!e.is_conflict());
        // The majority side wins once the voters' copies ended (and the 2 s hold-down, since a
        // may have moved it).
        let mut won = None;
        for _ in 0..30 {
            match leases["c"].acquire("web", None, "take over").await {
                Ok(l) => {
                    won = Some(l);
                    break;
                }
                Err(e) => {
                    assert!(
                        matches!(e, Failure::Busy { .. } | Failure::HoldDown { .. }),
                        "{e}"
                    );
                    fleet.run_for(Duration::from_secs(1)).await;
                }
            }
        }
        let won = won.expect("the majority side wins the lease");
        assert!(won.epoch().expect("held") > renewed, "fencing epochs rise");
        won.release(true).await;
        assert!(leases["c"].view().held.is_empty());
        // Released after a move: the service's hold-down.
        let e = leases["d"]
            .acquire("web", None, "")
            .await
            .expect_err("hold-down");
        assert!(matches!(e, Failure::HoldDown { .. }), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_fleet_document_nothing_is_granted_and_requests_under_another_version_are_refused()
     {
        let (fleet, leases, config) = fleet_with_leases(42, Duration::from_secs(10)).await;
        let settings = config.borrow().clone().expect("set").1;
        // One node runs ahead on a newer document naming the same voters: the others refuse.
        let mut newer = settings.clone();
        newer.max_migrations = 2;
        let (_newer, rx) = watch::channel(Some((2, newer)));
        let tasks = Tasks::default();
        let ahead = Leases::start(
            fleet.mesh("a").swarm.clone(),
            Arc::new(MemoryVoterStore::default()),
            rx,
            7,
            None,
            &tasks,
        );
        let e = ahead
            .acquire("web", None, "")
            .await
            .expect_err("another version");
        assert_eq!(e, Failure::Config { held: 1 });
        // A node that holds no fleet document asks for nothing and votes for nothing.
        let (_none, rx) = watch::channel(None);
        let bare = Leases::start(
            fleet.mesh("b").swarm.clone(),
            Arc::new(MemoryVoterStore::default()),
            rx,
            8,
            None,
            &tasks,
        );
        assert_eq!(
            bare.acquire("web", None, "")
                .await
                .expect_err("no document"),
            Failure::Unconfigured
        );
        assert!(bare.view().config_version.is_none());
        assert!(leases["c"].view().voter);
        assert!(leases["c"].stats().votes_refused.load(Ordering::Relaxed) >= 1);
    }
}

#[cfg(test)]
mod hostile {
    use super::tests_support::*;
    use super::*;
    use augur_orchestrate::lease::wire::{Ballot, Invalid, Refusal};

    /// An admitted peer that forges another's ballot, or sends a malformed assignment, is refused
    /// with the reason and counted; nothing changes in the voter.
    #[tokio::test(start_paused = true)]
    async fn forged_ballots_and_bad_assignments_are_refused_and_counted() {
        let (fleet, leases, _config) = fleet_with_leases(43, Duration::from_secs(10)).await;
        let a: PeerId = fleet.peer_id("a").parse().expect("peer id");
        let forged = ActRequest::Lease(Request::Prepare {
            config: 1,
            ballot: Ballot {
                round: 99,
                proposer: fleet.peer_id("c"),
                nonce: 1,
                lease_id: 1,
            },
            keys: vec!["service/web".into()],
        });
        let reply = fleet
            .mesh("b")
            .swarm
            .lease_request(a, forged)
            .await
            .expect("answered");
        assert!(
            matches!(
                reply,
                ActReply::Lease(Reply::Refused {
                    why: Refusal::Invalid(Invalid::NotTheSender(_)),
                    ..
                })
            ),
            "{reply:?}"
        );
        assert_eq!(leases["a"].stats().votes_refused.load(Ordering::Relaxed), 1);
        assert!(leases["a"].view().open.is_empty());
        let bad = ActRequest::Assign(Assignment {
            service: "Not A Service!".into(),
            epoch: 1,
            seq: 1,
            entries: vec![],
            journal: None,
        });
        let reply = fleet
            .mesh("b")
            .swarm
            .lease_request(a, bad)
            .await
            .expect("answered");
        assert!(matches!(reply, ActReply::Assign(Err(_))), "{reply:?}");
    }
}
