//! The fleet events this agent has seen, numbered and bounded; the one stream behind the SSE
//! endpoint and gRPC `Subscribe`; and the pump that feeds the mesh's events into it.

use std::collections::VecDeque;
use std::sync::Arc;

use augur_mesh::FleetEvent;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One logged event with its index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

/// Events after an index: the answer of `GET /v1/events`.
#[derive(Debug, Serialize, Deserialize)]
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
            .filter(|e| e.index > after && matches(e.event.topic(), topics))
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
    Event(Box<Logged>),
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
        let backlog = page
            .events
            .into_iter()
            .map(|e| Delivery::Event(Box::new(e)));
        let live = futures::stream::unfold(
            (rx, topics, page.next),
            |(mut rx, topics, last)| async move {
                loop {
                    match rx.recv().await {
                        Ok(e) if e.index > last && matches(e.event.topic(), &topics) => {
                            let next = e.index;
                            return Some((Delivery::Event(Box::new(e)), (rx, topics, next)));
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

/// Reports this node's own events: into the fleet (which delivers them to the local log too), or
/// straight into the log outside a fleet.
#[derive(Clone, Debug)]
pub struct Emitter {
    pub mesh: Option<augur_mesh::Mesh>,
    pub log: EventLog,
    pub node_name: String,
}

impl Emitter {
    /// Reports `kind` about this node (and `resource_id`, if any).
    pub async fn emit(&self, kind: augur_mesh::EventKind, resource_id: Option<String>) {
        let self_id = self
            .mesh
            .as_ref()
            .map(|m| m.peer_id().to_string())
            .unwrap_or_default();
        let event = FleetEvent {
            ts_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            peer_id: self_id.clone(),
            node_name: Some(self.node_name.clone()),
            resource_id,
            origin: self_id,
            kind,
        };
        tracing::info!(topic = event.topic(), resource_id = ?event.resource_id, "fleet event");
        match &self.mesh {
            Some(m) => m.publish_event(event).await,
            None => {
                self.log.push(event);
            }
        }
    }
}

/// Feeds the mesh's events (`rx_mesh_events`) into the log until `stop`.
pub async fn pump(
    mut rx_mesh_events: broadcast::Receiver<FleetEvent>,
    log: EventLog,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            ev = rx_mesh_events.recv() => match ev {
                Ok(e) => { log.push(e); }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(dropped = n, "fleet event log fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str) -> FleetEvent {
        use augur_mesh::membership::MemberStatus;
        use augur_mesh::{Crossing, EventKind, MemberChange};
        let change = MemberChange {
            status: MemberStatus::Alive,
            gossip_addr: "10.0.0.1:1".into(),
            generation: 1,
        };
        let crossing = Crossing {
            failure_probability: 0.9,
            threshold: 0.75,
            eta_s: None,
            drivers: Vec::new(),
            model_version: "v".into(),
        };
        let kind = match topic {
            "member.joined" => EventKind::MemberJoined(change),
            "member.dead" => EventKind::MemberDead(change),
            "member.recovered" => EventKind::MemberRecovered(change),
            "member.left" => EventKind::MemberLeft(change),
            "member.removed" => EventKind::MemberRemoved,
            "prediction.above_threshold" => EventKind::PredictionAbove(crossing),
            "instance.exited" => EventKind::InstanceExited(augur_mesh::InstanceChange {
                instance: "web-0".into(),
                service: "web".into(),
                version: 3,
                addr: Some("10.0.0.1:4000".into()),
                reason: Some("exit status: 1".into()),
            }),
            "traffic.error" => EventKind::TrafficError(augur_mesh::TrafficProblem {
                service: "web".into(),
                proxy: "embedded".into(),
                reason: "port 8080 in use".into(),
            }),
            _ => EventKind::PredictionBelow(crossing),
        };
        let e = FleetEvent {
            ts_ms: 0,
            peer_id: "p".into(),
            node_name: None,
            resource_id: None,
            origin: "p".into(),
            kind,
        };
        assert_eq!(e.topic(), topic);
        // The wire form: the envelope, `topic` and `detail`; it decodes into the same event.
        let wire = serde_json::to_value(&e).expect("encodes");
        assert_eq!(wire["topic"], topic);
        assert_eq!(
            serde_json::from_value::<FleetEvent>(wire).expect("decodes"),
            e
        );
        e
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
        for t in ["instance.exited", "traffic.error"] {
            event(t);
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
                .map(|e| e.event.topic())
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
