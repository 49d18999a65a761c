//! The HTTP/JSON API (axum): health, Prometheus metrics, resources, telemetry queries and pushes.

use std::fmt::Write as _;
use std::time::Duration;

use augur_proto::{ResourceId, TELEMETRY_SCHEMA};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, ApiState};
use crate::accept::RejectReason;
use crate::fleet::events::Delivery;
use crate::history::ResourceSummary;
use crate::ingest::PushBatch;
use crate::ingest::parse_body;
use crate::sample::UnixMicros;
use crate::stats::{Source, counter_family, escape_label, gauge_family};

/// Default and largest number of samples one telemetry query returns.
pub const DEFAULT_QUERY_LIMIT: usize = 10_000;
pub const MAX_QUERY_LIMIT: usize = 100_000;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    let max_body =
        usize::try_from(state.config.borrow().api.max_body.as_u64()).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/resources", get(resources))
        .route("/v1/resources/{id}", get(resource))
        .route("/v1/resources/{id}/telemetry", get(telemetry))
        .route("/v1/telemetry", post(push))
        .route("/predict_failure", get(predict_get).post(predict_post))
        .route("/v1/predictions", get(predictions))
        .route("/v1/models", get(models))
        .route("/v1/members", get(members))
        .route("/v1/events", get(events))
        .route("/v1/models/train", post(train_models))
        .route("/v1/schema/telemetry", get(schema))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see the API table in the README".to_owned())
}

/// A restart of the gossip task keeps the node "degraded" this long (recent instability).
const GOSSIP_RESTART_DEGRADES_MS: u64 = 10 * 60 * 1000;

async fn healthz(State(st): State<ApiState>) -> Json<serde_json::Value> {
    let mut status = "ok";
    let mut body = json!({
        "node_name": st.node_name.as_str(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    // Writes failing under the history (a full disk): pushes get 507 and collected samples are
    // dropped (counted) until the writer reopens the store by itself.
    let failure = st.history.failure();
    if failure.is_some() {
        status = "degraded";
    }
    body["storage"] = json!({ "writable": failure.is_none(), "failure": failure });
    if let Some(mesh) = &st.mesh {
        let ms = &mesh.membership.stats;
        let restarts = ms
            .gossip_restarts
            .load(std::sync::atomic::Ordering::Relaxed);
        let last = ms.last_gossip_failure.lock().clone();
        let running = mesh.membership.is_running();
        let now_ms = augur_mesh::Clock::system().now_ms();
        let recent = last
            .as_ref()
            .is_some_and(|(_, at)| now_ms.saturating_sub(*at) < GOSSIP_RESTART_DEGRADES_MS);
        if !running || recent {
            status = "degraded";
        }
        body["mesh"] = json!({
            "gossip": if running { "running" } else { "stopped" },
            "gossip_restarts": restarts,
            "last_gossip_failure": last.map(|(reason, at)| json!({"reason": reason, "at_unix_ms": at})),
        });
    }
    body["status"] = json!(status);
    Json(body)
}

async fn status(State(st): State<ApiState>) -> Json<super::Status> {
    Json(st.status())
}

async fn schema() -> Response {
    (
        [(header::CONTENT_TYPE, "application/schema+json")],
        TELEMETRY_SCHEMA,
    )
        .into_response()
}

async fn metrics(State(st): State<ApiState>) -> Response {
    let mut extra = String::new();
    let (resources, samples, bytes) = st.history.totals();
    gauge_family(
        &mut extra,
        "augur_history_resources",
        "Resources tracked",
        [(String::new(), resources as f64)],
    );
    gauge_family(
        &mut extra,
        "augur_history_samples",
        "Samples stored on disk",
        [(String::new(), samples as f64)],
    );
    gauge_family(
        &mut extra,
        "augur_history_bytes",
        "Logical bytes of stored samples",
        [(String::new(), bytes as f64)],
    );
    gauge_family(
        &mut extra,
        "augur_uptime_seconds",
        "Seconds since the agent started",
        [(String::new(), st.started.elapsed().as_secs_f64())],
    );
    let mut latest = Vec::new();
    for r in st.history.resources() {
        if let Some(s) = &r.latest {
            for (name, v) in &s.metrics {
                let mut labels = String::new();
                let _ = write!(
                    labels,
                    "resource_id=\"{}\",resource_type=\"{}\",metric=\"{}\"",
                    escape_label(r.resource_id.as_str()),
                    escape_label(r.meta.resource_type.as_str()),
                    escape_label(name)
                );
                latest.push((labels, *v));
            }
        }
    }
    gauge_family(
        &mut extra,
        "augur_sample",
        "Latest value of each metric of each resource",
        latest,
    );
    {
        use std::sync::atomic::Ordering::Relaxed;
        let p = &st.predict_stats;
        gauge_family(
            &mut extra,
            "augur_predict_engine_bytes",
            "Estimated memory of the prediction engines (budget: models.max_engine_memory)",
            [(String::new(), p.engine_bytes.load(Relaxed) as f64)],
        );
        counter_family(
            &mut extra,
            "augur_predict_refused",
            "Samples stored but not predicted: the engines' memory budget was spent when their resource first came",
            [(String::new(), p.refused_samples.load(Relaxed) as f64)],
        );
        counter_family(
            &mut extra,
            "augur_predict_engines_evicted",
            "Prediction engines dropped because retention removed their resource",
            [(String::new(), p.evicted.load(Relaxed) as f64)],
        );
        let c = &st.connections;
        let per = |f: fn(&super::conn::ConnStats) -> &std::sync::atomic::AtomicU64| {
            [("http", &c.http), ("grpc", &c.grpc)]
                .map(|(l, s)| (format!("listener=\"{l}\""), f(s).load(Relaxed) as f64))
        };
        gauge_family(
            &mut extra,
            "augur_api_connections",
            "Open API connections, by listener",
            per(|s| &s.open),
        );
        counter_family(
            &mut extra,
            "augur_api_connections_refused",
            "API connections closed on arrival because api.max_connections were open",
            per(|s| &s.refused),
        );
        counter_family(
            &mut extra,
            "augur_api_connections_timed_out",
            "API connections closed for sending their request head or preface too slowly, or for idling",
            per(|s| &s.timed_out),
        );
    }
    if let Some(mesh) = &st.mesh {
        use std::sync::atomic::Ordering::Relaxed;
        let ms = &mesh.membership.stats;
        counter_family(
            &mut extra,
            "augur_mesh_values_rejected",
            "Gossiped values dropped, by reason (unsigned, bad_signature, malformed, stale, unadmitted, wrong_identity)",
            ms.rejected()
                .into_iter()
                .map(|(r, n)| (format!("reason=\"{r}\""), n as f64)),
        );
        counter_family(
            &mut extra,
            "augur_mesh_values_accepted",
            "Gossiped values verified and accepted",
            [(String::new(), ms.values_accepted.load(Relaxed) as f64)],
        );
        counter_family(
            &mut extra,
            "augur_mesh_held_verdicts",
            "Gossip rounds in which a member the failure detector judged dead stayed suspect (this node doubted itself, or the member answered a recent ping)",
            [(String::new(), ms.held_verdicts.load(Relaxed) as f64)],
        );
        counter_family(
            &mut extra,
            "augur_mesh_self_doubts",
            "Gossip rounds this node ran late enough to doubt its own verdicts (it is starved)",
            [(String::new(), ms.self_doubts.load(Relaxed) as f64)],
        );
        gauge_family(
            &mut extra,
            "augur_mesh_unadmitted_nodes",
            "Nodes gossiping without a valid join token (ignored)",
            [(String::new(), ms.unadmitted_nodes.load(Relaxed) as f64)],
        );
        let t = &mesh.traffic;
        counter_family(
            &mut extra,
            "augur_mesh_gossip_bytes",
            "Membership gossip (chitchat) bytes, by direction",
            [
                (
                    "direction=\"sent\"".to_owned(),
                    t.bytes_sent.load(Relaxed) as f64,
                ),
                (
                    "direction=\"received\"".to_owned(),
                    t.bytes_received.load(Relaxed) as f64,
                ),
            ],
        );
        let sec = &mesh.membership.sessions.stats;
        counter_family(
            &mut extra,
            "augur_mesh_gossip_dropped",
            "Gossip datagrams dropped before chitchat saw them (incoming: malformed, unknown_sender, bad_tag, replayed, unadmitted, bad_probe, rate_limited, bad_message, too_many_peers) or not sent (unbound_destination, oversize)",
            sec.dropped()
                .into_iter()
                .map(|(d, n)| (format!("reason=\"{}\"", d.as_str()), n as f64)),
        );
        gauge_family(
            &mut extra,
            "augur_mesh_gossip_sessions",
            "Admitted peers holding an authenticated gossip session",
            [(String::new(), sec.sessions.load(Relaxed) as f64)],
        );
        counter_family(
            &mut extra,
            "augur_mesh_gossip_restarts",
            "Times the gossip task ended unexpectedly and was started again with fresh state",
            [(String::new(), ms.gossip_restarts.load(Relaxed) as f64)],
        );
        counter_family(
            &mut extra,
            "augur_mesh_events_refused",
            "Gossiped fleet events refused (about another node than their origin, or contradicted by this node's view)",
            [(String::new(), mesh.events_refused.load(Relaxed) as f64)],
        );
        let ss = &mesh.swarm.stats;
        counter_family(
            &mut extra,
            "augur_mesh_peers_refused",
            "libp2p peers disconnected for lacking a valid join token",
            [(String::new(), ss.refused.load(Relaxed) as f64)],
        );
        counter_family(
            &mut extra,
            "augur_mesh_peers_revoked",
            "Admitted libp2p peers disconnected because their token expired or its fleet key was removed",
            [(String::new(), ss.revoked.load(Relaxed) as f64)],
        );
        counter_family(
            &mut extra,
            "augur_mesh_messages_rejected",
            "Gossipsub messages rejected (origin or forwarder not admitted)",
            [(String::new(), ss.messages_rejected.load(Relaxed) as f64)],
        );
        let members = mesh.members();
        let by_status = ["alive", "suspect", "dead", "left"].map(|s| {
            (
                format!("status=\"{s}\""),
                members
                    .iter()
                    .filter(|m| serde_json::to_value(m.status).ok() == Some(json!(s)))
                    .count() as f64,
            )
        });
        gauge_family(
            &mut extra,
            "augur_mesh_members",
            "Members by status, this node included",
            by_status,
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.stats.render(&extra),
    )
        .into_response()
}

/// A resource as the HTTP API shows it.
#[derive(Debug, Serialize)]
pub struct ResourceView {
    pub resource_id: String,
    pub resource_type: String,
    pub first_ts: String,
    pub last_ts: String,
    pub samples: u64,
    pub bytes: u64,
    pub latest: Option<serde_json::Value>,
}

impl From<ResourceSummary> for ResourceView {
    fn from(r: ResourceSummary) -> Self {
        Self {
            resource_id: r.resource_id.to_string(),
            resource_type: r.meta.resource_type.to_string(),
            first_ts: r.meta.first_ts.to_rfc3339(),
            last_ts: r.meta.last_ts.to_rfc3339(),
            samples: r.meta.samples,
            bytes: r.meta.bytes,
            latest: r
                .latest
                .and_then(|s| serde_json::to_value(s.to_record()).ok()),
        }
    }
}

async fn resources(State(st): State<ApiState>) -> Json<serde_json::Value> {
    let list: Vec<ResourceView> = st
        .history
        .resources()
        .into_iter()
        .map(ResourceView::from)
        .collect();
    Json(json!({ "resources": list }))
}

fn parse_id(id: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(id).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn unknown(id: &ResourceId) -> ApiError {
    ApiError::NotFound(format!(
        "unknown resource {id}; GET /v1/resources lists the known ones"
    ))
}

async fn resource(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ResourceView>, ApiError> {
    let id = parse_id(&id)?;
    st.history
        .resource(&id)
        .map(|r| Json(r.into()))
        .ok_or_else(|| unknown(&id))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

/// Parses a time bound: RFC 3339, or a duration meaning that long before now (`90s`, `5m`, `1h`).
pub fn parse_time(s: &str, now: UnixMicros) -> Result<UnixMicros, String> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(UnixMicros::from_offset(t));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now.saturating_sub_micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)));
    }
    Err(format!(
        "{s:?} is neither an RFC 3339 time nor a duration such as 5m"
    ))
}

async fn telemetry(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let now = UnixMicros::now();
    let until = match &q.until {
        Some(s) => parse_time(s, now).map_err(|e| ApiError::BadRequest(format!("until: {e}")))?,
        None => UnixMicros(now.0.saturating_add(1)),
    };
    let since = match &q.since {
        Some(s) => parse_time(s, now).map_err(|e| ApiError::BadRequest(format!("since: {e}")))?,
        None => until.saturating_sub_micros(3_600_000_000),
    };
    let limit = q
        .limit
        .unwrap_or(DEFAULT_QUERY_LIMIT)
        .clamp(1, MAX_QUERY_LIMIT);
    let history = st.history.clone();
    let qid = id.clone();
    let result = tokio::task::spawn_blocking(move || history.query(&qid, since, until, limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| unknown(&id))?;
    let records: Vec<_> = result.samples.iter().map(|s| s.to_record()).collect();
    Ok(Json(json!({
        "resource_id": id.as_str(),
        "since": since.to_rfc3339(),
        "until": until.to_rfc3339(),
        "records": records,
        "truncated": result.truncated,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    resource_id: String,
}

async fn predict_get(
    State(st): State<ApiState>,
    q: Result<Query<PredictRequest>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<crate::predict::PredictionView>, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; use /predict_failure?resource_id=ID",
            e.body_text()
        ))
    })?;
    st.prediction(&q.resource_id).map(Json)
}

async fn predict_post(
    State(st): State<ApiState>,
    body: Result<Json<PredictRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::predict::PredictionView>, ApiError> {
    let Json(q) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; send {{\"resource_id\": \"...\"}}",
            e.body_text()
        ))
    })?;
    st.prediction(&q.resource_id).map(Json)
}

async fn predictions(State(st): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({ "predictions": st.predictions.all() }))
}

async fn models(State(st): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({ "engine": augur_models::engine::MODEL_VERSION, "models": st.models.all() }))
}

/// Trains every resource type's models now (in the trainer thread) and answers what happened.
async fn train_models(State(st): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let trainer = st.trainer.as_ref().ok_or_else(|| {
        ApiError::Unavailable("this agent runs without a model trainer".to_owned())
    })?;
    let outcomes = trainer.train_now().await.ok_or_else(|| {
        ApiError::Unavailable(
            "the trainer is busy with earlier requests or stopped; try again shortly".to_owned(),
        )
    })?;
    Ok(Json(json!({ "outcomes": outcomes })))
}

async fn members(State(st): State<ApiState>) -> Json<serde_json::Value> {
    match &st.mesh {
        Some(mesh) => {
            let mut members = mesh.members();
            members.sort_by(|a, b| {
                b.is_self
                    .cmp(&a.is_self)
                    .then_with(|| a.node_name.cmp(&b.node_name))
            });
            Json(json!({ "mesh": true, "peer_id": mesh.peer_id().to_string(), "members": members }))
        }
        None => Json(json!({
            "mesh": false,
            "members": [],
            "message": "this agent is not in a fleet: no join token is configured (see `augur fleet init` and `augur fleet token`)",
        })),
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Resume after this index.
    since: Option<u64>,
    /// Keep the connection open (server-sent events).
    #[serde(default)]
    follow: bool,
}

/// Fleet events: a JSON page, or with `follow=true` (or `Accept: text/event-stream`) a stream of
/// server-sent events whose `id` is the event index. `topic` (repeatable) filters by prefix; `since`
/// or the `Last-Event-ID` header resumes. A stream first sends a `missed` event when the buffer no
/// longer holds everything after the requested index.
async fn events(
    State(st): State<ApiState>,
    headers: axum::http::HeaderMap,
    raw: axum::extract::RawQuery,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; use /v1/events?topic=member&since=N&follow=true",
            e.body_text()
        ))
    })?;
    let topics: Vec<String> = raw
        .0
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.strip_prefix("topic="))
        .map(|t| t.replace("%2E", ".").replace("%2e", "."))
        .collect();
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let after = q.since.or(last_id).unwrap_or(0);
    let wants_stream = q.follow
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_stream {
        return Ok(Json(st.events.since(after, &topics).0).into_response());
    }
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt as _;
    let stream = st.events.follow(after, topics).map(|d| {
        Ok::<_, std::convert::Infallible>(match d {
            Delivery::Event(e) => Event::default()
                .id(e.index.to_string())
                .data(serde_json::to_string(&e).unwrap_or_default()),
            Delivery::Missed { count, after } => Event::default()
                .event("missed")
                .data(json!({ "missed": count, "after": after }).to_string()),
        })
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Whether a body failed because it arrived too slowly (`api.body_timeout`).
fn body_timed_out(rej: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rej);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}

async fn push(
    State(st): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = match body {
        Ok(b) => b,
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            st.stats.rejected(Source::Http, RejectReason::Oversized);
            let limit = st.config.borrow().api.max_body.as_u64();
            return Err(ApiError::PayloadTooLarge { limit });
        }
        Err(rej) if body_timed_out(&rej) => {
            let limit = st.config.borrow().api.body_timeout;
            return Err(ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} (api.body_timeout)",
                humantime::format_duration(limit)
            )));
        }
        Err(rej) => return Err(ApiError::BadRequest(rej.body_text())),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        st.stats.rejected(Source::Http, RejectReason::Empty);
        return Err(ApiError::BadRequest(
            "empty body; send telemetry records as JSON lines or a JSON array".to_owned(),
        ));
    }
    let records = tokio::task::spawn_blocking(move || parse_body(&body))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut batch = PushBatch::new(&st.ingestor, Source::Http);
    for (i, rec) in records.into_iter().enumerate() {
        batch.record(i, rec);
    }
    let outcome = batch.commit().await?;
    let code = if outcome.rejected == 0 {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((code, Json(outcome)).into_response())
}

/// Serves until `shutdown`, then drains in-flight requests.
///
/// Each connection needs a slot (`api.max_connections`); its request heads must arrive within
/// `api.header_timeout` (which also closes idle keep-alive connections) and its bodies within
/// `api.body_timeout` (see [`super::conn`]). On shutdown, connections finish their request in
/// flight and close.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    gate: super::conn::Gate,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let limits = super::conn::Limits::from_config(&state.config.borrow().api);
    let app = router(state).layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) if super::conn::accept_error_is_transient(&e) => {
                    tracing::debug!(error = %e, "HTTP accept failed; continuing");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        // Over the cap: closed at once (counted), so slow clients cannot use up descriptors.
        let Some(slot) = gate.admit() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        let stats = gate.stats.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    stats
                        .timed_out
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_accept_rfc3339_and_durations() {
        let now = UnixMicros(10_000_000_000);
        assert_eq!(
            parse_time("5m", now),
            Ok(UnixMicros(10_000_000_000 - 300_000_000))
        );
        assert_eq!(
            parse_time("1970-01-01T00:00:01Z", now),
            Ok(UnixMicros(1_000_000))
        );
        assert!(parse_time("yesterday", now).is_err());
    }
}
