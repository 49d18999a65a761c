//! The gRPC API (tonic): telemetry push, status and queries, plus grpc.health.v1 and reflection.

use augur_proto::ResourceId;
use augur_proto::v1::agent_server::{Agent, AgentServer};
use augur_proto::v1::telemetry_server::{Telemetry, TelemetryServer};
use augur_proto::v1::{
    ChangeServiceRequest, ChangeServiceResponse, FleetEvent as FleetEventMsg, InstanceInfo,
    ListMigrationsRequest, ListMigrationsResponse, ListResourcesRequest, ListResourcesResponse,
    ListServicesRequest, ListServicesResponse, MigrationInfo, OrchestrateMigrationRequest,
    PredictFailureRequest, Prediction, PushSummary, QueryTelemetryRequest, QueryTelemetryResponse,
    RejectedSample, ResourceInfo, RouteInfo, ServiceInfo, StatusRequest, StatusResponse,
    SubscribeRequest, TelemetrySample, TrafficErrorInfo,
};
use std::time::Duration;

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::http::{DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT};
use super::{ApiError, ApiState};
use crate::accept::RejectReason;
use crate::fleet::events::Delivery;
use crate::ingest::PushBatch;
use crate::sample::UnixMicros;
use crate::stats::Source;

/// Samples gathered from a push stream before they are handed to the writer.
const PUSH_CHUNK: usize = 1_000;
/// Longest a pushed sample waits in a partial chunk.
const PUSH_FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct GrpcApi {
    state: ApiState,
}

#[tonic::async_trait]
impl Telemetry for GrpcApi {
    async fn push(
        &self,
        request: Request<Streaming<TelemetrySample>>,
    ) -> Result<Response<PushSummary>, Status> {
        let mut stream = request.into_inner();
        let ingestor = &self.state.ingestor;
        let mut summary = PushSummary::default();
        let mut index: u64 = 0;
        let mut batch = PushBatch::new(ingestor, Source::Grpc);
        // A long-lived stream is flushed every PUSH_FLUSH_AFTER too, so a slow sender's samples
        // become durable (and visible) without waiting for a full chunk or the end of the stream.
        let mut flush_at: Option<tokio::time::Instant> = None;
        loop {
            let item = match flush_at {
                None => stream.next().await,
                Some(at) => tokio::select! {
                    item = stream.next() => item,
                    () = tokio::time::sleep_until(at) => {
                        let due = std::mem::replace(&mut batch, PushBatch::new(ingestor, Source::Grpc));
                        merge(&mut summary, due.commit().await.map_err(|e| Status::from(ApiError::from(e)))?);
                        flush_at = None;
                        continue;
                    }
                },
            };
            let Some(item) = item else { break };
            if flush_at.is_none() {
                flush_at = Some(tokio::time::Instant::now() + PUSH_FLUSH_AFTER);
            }
            match item {
                Ok(sample) => batch.proto(index as usize, sample),
                Err(status) => {
                    // A message over the size limit, or a broken stream: count it and stop reading.
                    let reason = if status.code() == tonic::Code::OutOfRange
                        || status.code() == tonic::Code::ResourceExhausted
                    {
                        RejectReason::Oversized
                    } else {
                        RejectReason::MalformedJson
                    };
                    self.state.stats.rejected(Source::Grpc, reason);
                    summary.rejected += 1;
                    summary.errors.push(RejectedSample {
                        index,
                        error: format!("{}: {}", reason.as_str(), status.message()),
                    });
                    break;
                }
            }
            index += 1;
            if batch.samples.len() >= PUSH_CHUNK {
                let full = std::mem::replace(&mut batch, PushBatch::new(ingestor, Source::Grpc));
                merge(
                    &mut summary,
                    full.commit()
                        .await
                        .map_err(|e| Status::from(ApiError::from(e)))?,
                );
                flush_at = None;
            }
        }
        merge(
            &mut summary,
            batch
                .commit()
                .await
                .map_err(|e| Status::from(ApiError::from(e)))?,
        );
        Ok(Response::new(summary))
    }
}

fn merge(summary: &mut PushSummary, outcome: crate::ingest::PushOutcome) {
    summary.accepted += outcome.accepted as u64;
    summary.rejected += outcome.rejected as u64;
    for e in outcome.errors {
        if summary.errors.len() < crate::ingest::batch::MAX_REPORTED_ERRORS {
            summary.errors.push(RejectedSample {
                index: e.index as u64,
                error: format!("{}: {}", e.reason, e.error),
            });
        }
    }
}

fn event_msg(e: crate::fleet::events::Logged) -> FleetEventMsg {
    FleetEventMsg {
        index: e.index,
        topic: e.event.topic().to_owned(),
        ts: Some(UnixMicros((e.event.ts_ms as i64).saturating_mul(1000)).to_timestamp()),
        peer_id: e.event.peer_id,
        node_name: e.event.node_name.unwrap_or_default(),
        resource_id: e.event.resource_id.unwrap_or_default(),
        origin: e.event.origin,
        detail_json: e.event.kind.detail().to_string(),
        missed: 0,
    }
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<FleetEventMsg, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for GrpcApi {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        let stream = self.state.fleet.events.follow(r.since, r.topics).map(|d| {
            Ok(match d {
                Delivery::Event(e) => event_msg(*e),
                Delivery::Missed { count, after } => FleetEventMsg {
                    missed: count,
                    index: after,
                    ..Default::default()
                },
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = self.state.status();
        Ok(Response::new(StatusResponse {
            node_name: s.node_name,
            peer_id: s.peer_id,
            version: s.version.to_owned(),
            uptime_s: s.uptime_s,
            resources: s.resources,
            samples_stored: s.samples_stored,
            samples_accepted: s.samples_accepted,
            samples_rejected: s.samples_rejected,
            history_bytes: s.history_bytes,
        }))
    }

    async fn predict_failure(
        &self,
        request: Request<PredictFailureRequest>,
    ) -> Result<Response<Prediction>, Status> {
        let view = self.state.prediction(&request.into_inner().resource_id)?;
        Ok(Response::new(view.to_proto()))
    }

    async fn list_resources(
        &self,
        _: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let resources = self
            .state
            .history
            .resources()
            .into_iter()
            .map(|r| ResourceInfo {
                resource_id: r.resource_id.to_string(),
                resource_type: r.meta.resource_type.to_string(),
                first_ts: Some(r.meta.first_ts.to_timestamp()),
                last_ts: Some(r.meta.last_ts.to_timestamp()),
                samples: r.meta.samples,
                latest: r
                    .latest
                    .map(|s| s.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(ListResourcesResponse { resources }))
    }

    async fn list_services(
        &self,
        _: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let catalog = &self.state.catalog;
        let services = catalog
            .services()
            .into_iter()
            .map(|s| ServiceInfo {
                spec_json: serde_json::to_string(&s.spec).unwrap_or_default(),
                name: s.name,
                version: s.version,
            })
            .collect();
        let members = self
            .state
            .fleet
            .mesh
            .as_ref()
            .map(augur_mesh::Mesh::members)
            .unwrap_or_default();
        let instances = crate::services::runtime::fleet_instances(
            self.state.node.node_name.as_str(),
            &self.state.instances.read(),
            &members,
        )
        .into_iter()
        .map(|i| InstanceInfo {
            node: i.node,
            id: i.id,
            service: i.service,
            version: i.version,
            addr: i.addr,
            health: i.health,
            epoch: i.epoch,
            reason: i.reason.unwrap_or_default(),
        })
        .collect();
        let routes = self
            .state
            .routes
            .read()
            .services
            .iter()
            .flat_map(|(service, backends)| {
                backends.iter().map(|(addr, w)| RouteInfo {
                    service: service.clone(),
                    addr: addr.clone(),
                    weight: u32::from(*w),
                })
            })
            .collect();
        Ok(Response::new(ListServicesResponse {
            services,
            versions: catalog.versions().into_iter().collect(),
            instances,
            routes,
            traffic_errors: self
                .state
                .traffic_problems
                .read()
                .iter()
                .map(|p| TrafficErrorInfo {
                    service: p.service.clone(),
                    proxy: p.proxy.clone(),
                    reason: p.reason.clone(),
                })
                .collect(),
        }))
    }

    async fn change_service(
        &self,
        request: Request<ChangeServiceRequest>,
    ) -> Result<Response<ChangeServiceResponse>, Status> {
        let document = request.into_inner().document;
        let catalog = self.state.catalog.clone();
        let (name, version, outcome) = tokio::task::spawn_blocking(move || {
            catalog.offer_text(
                &document,
                UnixMicros::now().as_unix_s(),
                augur_mesh::operator::Freshness::New,
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::from(ApiError::from(e)))?;
        Ok(Response::new(ChangeServiceResponse {
            name,
            version,
            outcome: match outcome {
                augur_orchestrate::catalog::Outcome::Accepted => "accepted",
                _ => "duplicate",
            }
            .to_owned(),
        }))
    }

    async fn orchestrate_migration(
        &self,
        request: Request<OrchestrateMigrationRequest>,
    ) -> Result<Response<MigrationInfo>, Status> {
        let document = request.into_inner().document;
        let j = super::migrations::start(&self.state, &document)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(migration_info(&j)))
    }

    async fn list_migrations(
        &self,
        request: Request<ListMigrationsRequest>,
    ) -> Result<Response<ListMigrationsResponse>, Status> {
        let id = request.into_inner().id;
        let migrations = if id.is_empty() {
            super::migrations::list(&self.state)
        } else {
            vec![super::migrations::get(&self.state, &id).map_err(Status::from)?]
        };
        Ok(Response::new(ListMigrationsResponse {
            migrations: migrations.iter().map(migration_info).collect(),
        }))
    }

    async fn query_telemetry(
        &self,
        request: Request<QueryTelemetryRequest>,
    ) -> Result<Response<QueryTelemetryResponse>, Status> {
        let q = request.into_inner();
        let id = ResourceId::parse(q.resource_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let until = q.until.as_ref().map_or_else(
            || UnixMicros(UnixMicros::now().0 + 1),
            UnixMicros::from_timestamp,
        );
        let since = q.since.as_ref().map_or_else(
            || until.saturating_sub_micros(3_600_000_000),
            UnixMicros::from_timestamp,
        );
        let limit = if q.limit == 0 {
            DEFAULT_QUERY_LIMIT
        } else {
            (q.limit as usize).min(MAX_QUERY_LIMIT)
        };
        let history = self.state.history.clone();
        let qid = id.clone();
        let result = tokio::task::spawn_blocking(move || history.query(&qid, since, until, limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::from(ApiError::NotFound(format!("unknown resource {id}"))))?;
        Ok(Response::new(QueryTelemetryResponse {
            samples: result.samples.iter().map(|s| s.to_proto()).collect(),
            truncated: result.truncated,
        }))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves augur.v1, grpc.health.v1 and reflection until `shutdown`.
///
/// Each connection needs a slot (`api.max_connections`), must send its HTTP/2 preface within
/// `api.header_timeout`, and is closed after `api.idle_timeout` without reading anything (see
/// [`super::conn`]); keepalive pings every third of that keep live clients reading.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    gate: super::conn::Gate,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), BoxError> {
    let max =
        usize::try_from(state.config.borrow().api.max_grpc_message.as_u64()).unwrap_or(usize::MAX);
    let limits = super::conn::Limits::from_config(&state.config.borrow().api);
    let api = GrpcApi { state };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<TelemetryServer<GrpcApi>>()
        .await;
    health_reporter.set_serving::<AgentServer<GrpcApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(augur_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // The HTTP/2 client preface is 24 bytes.
    const PREFACE: usize = 24;
    let incoming = futures::stream::unfold(listener, move |listener| {
        let gate = gate.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let Some(slot) = gate.admit() else { continue };
                        let _ = stream.set_nodelay(true);
                        let guarded = super::conn::Guarded::new(stream, slot, PREFACE, &limits);
                        return Some((Ok::<_, std::io::Error>(guarded), listener));
                    }
                    Err(e) if super::conn::accept_error_is_transient(&e) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Some((Err(e), listener)),
                }
            }
        }
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.idle_timeout / 3))
        .http2_keepalive_timeout(Some(limits.idle_timeout / 3))
        .add_service(health)
        .add_service(reflection)
        .add_service(TelemetryServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(AgentServer::new(api).max_decoding_message_size(max))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

fn migration_info(j: &crate::migrate::executor::Journal) -> MigrationInfo {
    use augur_orchestrate::migration::{Outcome, Phase};
    let p = &j.record.plan;
    MigrationInfo {
        id: j.id.clone(),
        service: p.service.clone(),
        strategy: serde_json::to_value(p.strategy)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        from: p.old.node.clone(),
        to: p.new.node.clone(),
        phase: match &j.record.phase {
            Phase::Forward { .. } => "forward",
            Phase::RollingBack { .. } => "rolling_back",
            Phase::Resuming { .. } => "resuming",
            Phase::Finished(_) => "finished",
        }
        .to_owned(),
        epoch: j.record.epoch,
        outcome: match j.outcome() {
            Some(Outcome::Completed) => "completed",
            Some(Outcome::Refused { .. }) => "refused",
            Some(Outcome::RolledBack { .. }) => "rolled_back",
            Some(Outcome::Abandoned { .. }) => "abandoned",
            None => "",
        }
        .to_owned(),
        journal_json: serde_json::to_string(j).unwrap_or_default(),
    }
}
