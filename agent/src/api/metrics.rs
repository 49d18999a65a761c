//! The values `/metrics` reads at scrape time (history totals, each resource's latest sample, the
//! prediction stage, the API's connections, unexpected task ends, the mesh), as one
//! prometheus-client collector registered once with the agent's registry (`crate::stats`), which
//! keeps the counters incremented where things happen.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use augur_mesh::Mesh;
use augur_mesh::membership::MemberStatus;
use augur_mesh::tasks::TaskHealth;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Connections;
use crate::history::History;
use crate::predict::PredictStats;

/// What the collector reads.
#[derive(Debug)]
pub struct Scraped {
    pub history: History,
    pub started: Instant,
    pub predict: PredictStats,
    pub connections: Connections,
    pub tasks: Arc<TaskHealth>,
    pub mesh: Option<Mesh>,
    /// The service catalog's accepted and refused changes.
    pub catalog: Option<crate::services::catalog::CatalogStore>,
    /// The services' instances and proxies on this node.
    pub services: Option<Arc<crate::services::ServiceStats>>,
    /// This node's lease voter and acquisitions.
    pub leases: Option<augur_mesh::leases::Leases>,
}

type Labels = Vec<(&'static str, String)>;

/// Writes one family: a gauge or counter per label set.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let e = if labels.is_empty() {
            metric.encode_family(&NoLabels)?
        } else {
            metric.encode_family(&labels)?
        };
        // Whole numbers print as integers (`3`, not `3.0`).
        let whole = v.fract() == 0.0 && v.abs() < 9.0e15;
        match (kind, whole) {
            (MetricType::Counter, true) => ConstCounter::new(v as u64).encode(e)?,
            (MetricType::Counter, false) => ConstCounter::new(v).encode(e)?,
            (_, true) => ConstGauge::new(v as i64).encode(e)?,
            (_, false) => ConstGauge::new(v).encode(e)?,
        }
    }
    Ok(())
}

/// A family member without labels.
#[derive(Debug)]
struct NoLabels;

impl EncodeLabelSet for NoLabels {
    fn encode(&self, _: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        Ok(())
    }
}

fn one(v: f64) -> [(Labels, f64); 1] {
    [(Vec::new(), v)]
}

fn load(a: &AtomicU64) -> f64 {
    a.load(Relaxed) as f64
}

impl Collector for Scraped {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let (resources, samples, bytes) = self.history.totals();
        family(
            &mut enc,
            "history_resources",
            "Resources tracked",
            Gauge,
            one(resources as f64),
        )?;
        family(
            &mut enc,
            "history_samples",
            "Samples stored on disk",
            Gauge,
            one(samples as f64),
        )?;
        family(
            &mut enc,
            "history_bytes",
            "Logical bytes of stored samples",
            Gauge,
            one(bytes as f64),
        )?;
        family(
            &mut enc,
            "uptime_seconds",
            "Seconds since the agent started",
            Gauge,
            one(self.started.elapsed().as_secs_f64()),
        )?;
        let mut latest = Vec::new();
        for r in self.history.resources() {
            if let Some(s) = &r.latest {
                for (name, v) in &s.metrics {
                    let labels = vec![
                        ("resource_id", r.resource_id.to_string()),
                        ("resource_type", r.meta.resource_type.to_string()),
                        ("metric", name.clone()),
                    ];
                    latest.push((labels, *v));
                }
            }
        }
        family(
            &mut enc,
            "sample",
            "Latest value of each metric of each resource",
            Gauge,
            latest,
        )?;
        let p = &self.predict;
        family(
            &mut enc,
            "predict_engine_bytes",
            "Estimated memory of the prediction engines (budget: models.max_engine_memory)",
            Gauge,
            one(load(&p.engine_bytes)),
        )?;
        family(
            &mut enc,
            "predict_refused",
            "Samples stored but not predicted: the engines' memory budget was spent when their resource first came",
            Counter,
            one(load(&p.refused_samples)),
        )?;
        family(
            &mut enc,
            "predict_engines_evicted",
            "Prediction engines dropped because retention removed their resource",
            Counter,
            one(load(&p.evicted)),
        )?;
        family(
            &mut enc,
            "predict_crossings_dropped",
            "Threshold crossings the fleet publisher's queue had no room for (no fleet event was sent)",
            Counter,
            one(load(&p.crossings_dropped)),
        )?;
        family(
            &mut enc,
            "tasks_ended_unexpectedly",
            "Agent tasks that ended while the agent was not stopping (they are not restarted; /healthz lists them)",
            Counter,
            one(self.tasks.ended_total() as f64),
        )?;
        let c = &self.connections;
        let per = |f: fn(&super::conn::ConnStats) -> &AtomicU64| {
            [("http", &c.http), ("grpc", &c.grpc)]
                .map(|(l, s)| (vec![("listener", l.to_owned())], load(f(s))))
        };
        family(
            &mut enc,
            "api_connections",
            "Open API connections, by listener",
            Gauge,
            per(|s| &s.open),
        )?;
        family(
            &mut enc,
            "api_connections_refused",
            "API connections closed on arrival because api.max_connections were open",
            Counter,
            per(|s| &s.refused),
        )?;
        family(
            &mut enc,
            "api_connections_timed_out",
            "API connections closed for sending their request head or preface too slowly, or for idling",
            Counter,
            per(|s| &s.timed_out),
        )?;
        if let Some(c) = &self.catalog {
            family(
                &mut enc,
                "catalog_changes_accepted",
                "Service catalog changes accepted (from the API or from peers)",
                Counter,
                one(load(&c.accepted)),
            )?;
            family(
                &mut enc,
                "catalog_changes_refused",
                "Service catalog changes refused: not signed by a trusted operator, an invalid spec, an older version, or unreadable",
                Counter,
                one(load(&c.refused)),
            )?;
        }
        if let Some(s) = &self.services {
            encode_services(&mut enc, s)?;
        }
        if let Some(l) = &self.leases {
            encode_leases(&mut enc, l.stats())?;
        }
        if let Some(mesh) = &self.mesh {
            encode_mesh(&mut enc, mesh)?;
        }
        Ok(())
    }
}

fn encode_leases(enc: &mut DescriptorEncoder, s: &augur_mesh::leases::LeaseStats) -> fmt::Result {
    let rows: [(&str, &str, &AtomicU64); 9] = [
        (
            "lease_votes",
            "Lease requests this node's voter answered (refusals included)",
            &s.votes,
        ),
        (
            "lease_votes_refused",
            "Lease requests this node's voter refused (outbid, held, hold-down, another fleet document, invalid)",
            &s.votes_refused,
        ),
        (
            "lease_store_errors",
            "Lease votes not given because the voter's state could not be saved",
            &s.store_errors,
        ),
        ("leases_acquired", "Leases this node won", &s.acquired),
        (
            "leases_refused",
            "Leases this node asked for and did not get (busy, hold-down, budget, no majority)",
            &s.refused,
        ),
        (
            "leases_renewed",
            "Renewals of leases this node held",
            &s.renewed,
        ),
        (
            "leases_lost",
            "Leases this node held that ended without a renewal",
            &s.lost,
        ),
        (
            "lease_messages",
            "Lease messages this node sent and received for its own leases",
            &s.messages,
        ),
        (
            "lease_bytes",
            "Bytes (CBOR) of the lease messages this node sent and received for its own leases",
            &s.bytes,
        ),
    ];
    for (name, help, v) in rows {
        family(enc, name, help, MetricType::Counter, one(load(v)))?;
    }
    Ok(())
}

fn encode_services(enc: &mut DescriptorEncoder, s: &crate::services::ServiceStats) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    let counts = s.counts.lock().clone();
    let service = |n: &str| vec![("service", n.to_owned())];
    let per = |f: fn(&crate::services::ServiceCounts) -> u64| {
        counts
            .iter()
            .map(|(n, c)| (service(n), f(c) as f64))
            .collect::<Vec<_>>()
    };
    family(
        enc,
        "service_instance_starts",
        "Service instances started on this node (restarts included), by service",
        Counter,
        per(|c| c.starts),
    )?;
    family(
        enc,
        "service_instance_exits",
        "Service instances that exited without being asked to, or could not start, by service",
        Counter,
        per(|c| c.exits),
    )?;
    family(
        enc,
        "service_instance_became_healthy",
        "Service instances on this node that passed their health checks, by service",
        Counter,
        per(|c| c.became_healthy),
    )?;
    family(
        enc,
        "service_instance_became_unhealthy",
        "Service instances on this node that failed their health checks, by service",
        Counter,
        per(|c| c.became_unhealthy),
    )?;
    let errors = s.traffic_errors.lock().clone();
    family(
        enc,
        "traffic_errors",
        "What a proxy could not do, by service, proxy (embedded, haproxy) and reason (port_in_use, bind, socket, refused, static_balancing)",
        Counter,
        errors.into_iter().map(|((svc, proxy, reason), n)| {
            (
                vec![
                    ("service", svc),
                    ("proxy", proxy.to_owned()),
                    ("reason", reason.to_owned()),
                ],
                n as f64,
            )
        }),
    )?;
    let proxies = s.proxies.lock().clone();
    let each = |f: &dyn Fn(&augur_proxy::embedded::Stats, usize) -> f64| {
        proxies
            .iter()
            .map(|(n, (st, b))| (service(n), f(st, *b)))
            .collect::<Vec<_>>()
    };
    family(
        enc,
        "proxy_backends",
        "Backends of each service's embedded proxy (healthy instances in the fleet)",
        Gauge,
        each(&|_, b| b as f64),
    )?;
    family(
        enc,
        "proxy_connections_open",
        "Open connections through each service's embedded proxy",
        Gauge,
        each(&|st, _| load(&st.open)),
    )?;
    family(
        enc,
        "proxy_connections_accepted",
        "Connections accepted by each service's embedded proxy",
        Counter,
        each(&|st, _| load(&st.accepted)),
    )?;
    family(
        enc,
        "proxy_connections_over_capacity",
        "Connections closed on arrival because services.max_connections were open",
        Counter,
        each(&|st, _| load(&st.over_capacity)),
    )?;
    family(
        enc,
        "proxy_accept_failures",
        "Accepts that failed for want of a resource (file descriptors, memory); the waiting connections are tried again 10 ms later",
        Counter,
        each(&|st, _| load(&st.accept_failures)),
    )?;
    family(
        enc,
        "proxy_backend_connect_failures",
        "Connects to a backend that failed or timed out (the next backend was tried)",
        Counter,
        each(&|st, _| load(&st.connect_failures)),
    )?;
    family(
        enc,
        "proxy_connections_no_backend",
        "Connections closed because no backend could be reached",
        Counter,
        each(&|st, _| load(&st.no_backend)),
    )?;
    family(
        enc,
        "proxy_http_requests",
        "Requests forwarded by each service's embedded proxy in HTTP mode",
        Counter,
        each(&|st, _| load(&st.requests)),
    )?;
    family(
        enc,
        "proxy_http_bad_gateway",
        "HTTP-mode requests answered 502: no instance could be reached, or the instance failed after it had the request (never sent twice)",
        Counter,
        each(&|st, _| load(&st.bad_gateway)),
    )?;
    family(
        enc,
        "proxy_http_resent_unsent",
        "HTTP-mode requests given to another connection because a kept-alive one had closed before taking them",
        Counter,
        each(&|st, _| load(&st.resent_unsent)),
    )?;
    family(
        enc,
        "proxy_connections_cut_by_drain",
        "Connections cut when their backend's drain grace ended",
        Counter,
        each(&|st, _| load(&st.cut_by_drain)),
    )
}

fn encode_mesh(enc: &mut DescriptorEncoder, mesh: &Mesh) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    let ms = &mesh.membership.stats;
    let reason = |r: &str| vec![("reason", r.to_owned())];
    family(
        enc,
        "mesh_values_rejected",
        "Gossiped values dropped, by reason (unsigned, bad_signature, malformed, stale, unadmitted, wrong_identity)",
        Counter,
        ms.rejected()
            .into_iter()
            .map(|(r, n)| (reason(r), n as f64)),
    )?;
    family(
        enc,
        "mesh_values_accepted",
        "Gossiped values verified and accepted",
        Counter,
        one(load(&ms.values_accepted)),
    )?;
    family(
        enc,
        "mesh_held_verdicts",
        "Gossip rounds in which a member the failure detector judged dead stayed suspect (this node doubted itself, or the member answered a recent ping)",
        Counter,
        one(load(&ms.held_verdicts)),
    )?;
    family(
        enc,
        "mesh_self_doubts",
        "Gossip rounds this node ran late enough to doubt its own verdicts (it is starved)",
        Counter,
        one(load(&ms.self_doubts)),
    )?;
    family(
        enc,
        "mesh_unadmitted_nodes",
        "Nodes gossiping without a valid join token (ignored)",
        Gauge,
        one(load(&ms.unadmitted_nodes)),
    )?;
    let t = &mesh.traffic;
    family(
        enc,
        "mesh_gossip_bytes",
        "Membership gossip (chitchat) bytes, by direction",
        Counter,
        [
            (vec![("direction", "sent".to_owned())], load(&t.bytes_sent)),
            (
                vec![("direction", "received".to_owned())],
                load(&t.bytes_received),
            ),
        ],
    )?;
    let sec = &mesh.membership.sessions.stats;
    family(
        enc,
        "mesh_gossip_dropped",
        "Gossip datagrams dropped before chitchat saw them (incoming: malformed, unknown_sender, bad_tag, replayed, unadmitted, bad_probe, rate_limited, bad_message, too_many_peers) or not sent (unbound_destination, oversize)",
        Counter,
        sec.dropped()
            .into_iter()
            .map(|(d, n)| (reason(d.as_str()), n as f64)),
    )?;
    family(
        enc,
        "mesh_gossip_sessions",
        "Admitted peers holding an authenticated gossip session",
        Gauge,
        one(load(&sec.sessions)),
    )?;
    family(
        enc,
        "mesh_gossip_restarts",
        "Times the gossip task ended unexpectedly and was started again with fresh state",
        Counter,
        one(load(&ms.gossip_restarts)),
    )?;
    family(
        enc,
        "mesh_catalog_messages_undecodable",
        "Catalog messages from peers that could not be decoded (dropped)",
        Counter,
        one(load(&mesh.catalog_undecodable)),
    )?;
    family(
        enc,
        "mesh_events_refused",
        "Gossiped fleet events refused (about another node than their origin, or contradicted by this node's view)",
        Counter,
        one(load(&mesh.events_refused)),
    )?;
    let mu = &mesh.model_update_stats;
    family(
        enc,
        "mesh_model_updates_refused",
        "Model updates from peers refused before anything read them, by reason (oversized, malformed, unsigned, bad_signature, not_admitted)",
        Counter,
        mu.refused().into_iter().map(|(r, n)| (reason(r), n as f64)),
    )?;
    family(
        enc,
        "mesh_model_updates_opened",
        "Model updates from peers opened (signed by their admitted author), to be checked by the models",
        Counter,
        one(load(&mu.opened)),
    )?;
    let ss = &mesh.swarm.stats;
    family(
        enc,
        "mesh_peers_refused",
        "libp2p peers disconnected for lacking a valid join token",
        Counter,
        one(load(&ss.refused)),
    )?;
    family(
        enc,
        "mesh_peers_revoked",
        "Admitted libp2p peers disconnected because their token expired or its fleet key was removed",
        Counter,
        one(load(&ss.revoked)),
    )?;
    family(
        enc,
        "mesh_messages_rejected",
        "Gossipsub messages rejected (origin or forwarder not admitted)",
        Counter,
        one(load(&ss.messages_rejected)),
    )?;
    family(
        enc,
        "mesh_lease_requests",
        "Lease requests and assignments from admitted peers handed to this node",
        Counter,
        one(load(&ss.lease_requests)),
    )?;
    family(
        enc,
        "mesh_lease_requests_dropped",
        "Lease requests dropped: from a peer not admitted, the inbox full, or unreadable (malformed, oversized, cut short)",
        Counter,
        one(load(&ss.lease_dropped)),
    )?;
    family(
        enc,
        "mesh_lease_requests_failed",
        "Lease requests this node sent that got no reply (timeout, closed connection, peer not admitted)",
        Counter,
        one(load(&ss.lease_failures)),
    )?;
    let members = mesh.members();
    family(
        enc,
        "mesh_members",
        "Members by status, this node included",
        Gauge,
        MemberStatus::ALL.map(|s| {
            (
                vec![("status", s.as_str().to_owned())],
                members.iter().filter(|m| m.status == s).count() as f64,
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use augur_proto::{ResourceId, ResourceType};

    use super::*;
    use crate::sample::{Sample, UnixMicros};
    use crate::stats::Stats;

    #[test]
    fn scrape_time_values_are_rendered_with_the_counters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = History::open(dir.path(), 1 << 20, 10).expect("history");
        history
            .write(&[Sample {
                ts: UnixMicros::now(),
                resource_id: ResourceId::parse("web-1").expect("id"),
                resource_type: ResourceType::parse("service").expect("type"),
                metrics: BTreeMap::from([("lat\"ency".to_owned(), 12.5)]),
                event: None,
                labels: BTreeMap::new(),
            }])
            .expect("written");
        let stats = Stats::new();
        let connections = Connections::default();
        connections.http.refused.fetch_add(3, Relaxed);
        stats.register_collector(Box::new(Scraped {
            history,
            started: Instant::now(),
            predict: PredictStats::default(),
            connections,
            tasks: Arc::default(),
            mesh: None,
            catalog: None,
            leases: None,
            services: Some({
                let s = crate::services::ServiceStats::default();
                s.count("echo", |c| c.exits += 2);
                s.traffic_error("echo", "haproxy", "socket");
                let proxy = Arc::new(augur_proxy::embedded::Stats::default());
                proxy.connect_failures.fetch_add(4, Relaxed);
                s.proxies.lock().insert("echo".to_owned(), (proxy, 2));
                Arc::new(s)
            }),
        }));
        let text = stats.render();
        for line in [
            "augur_history_resources 1",
            "augur_history_samples 1",
            r#"augur_sample{resource_id="web-1",resource_type="service",metric="lat\"ency"} 12.5"#,
            r#"augur_api_connections_refused_total{listener="http"} 3"#,
            "augur_tasks_ended_unexpectedly_total 0",
            "# TYPE augur_api_connections gauge",
            r#"augur_service_instance_exits_total{service="echo"} 2"#,
            r#"augur_traffic_errors_total{service="echo",proxy="haproxy",reason="socket"} 1"#,
            r#"augur_proxy_backends{service="echo"} 2"#,
            r#"augur_proxy_backend_connect_failures_total{service="echo"} 4"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
