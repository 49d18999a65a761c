//! The HTTP/JSON API (axum): health, Prometheus metrics, resources, telemetry queries and pushes.

use std::sync::Arc;
use std::time::Duration;

use augur_proto::{ResourceId, TELEMETRY_SCHEMA};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::answers::{
    CatalogAnswer, CatalogChange, MemberList, Missed, ModelList, PredictionList, ResourceList,
    ResourceView, ServiceList, TelemetryPage, TrainAnswer,
};
use super::{ApiError, ApiState};
use crate::accept::RejectReason;
use crate::fleet::events::Delivery;
use crate::history::History;
use crate::ingest::PushBatch;
use crate::ingest::parse_body;
use crate::models::ModelStore;
use crate::predict::Predictions;
use crate::sample::UnixMicros;
use crate::stats::{Source, Stats};

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
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
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
        .route("/v1/resources/{id}/series", get(series))
        .route("/v1/resources/{id}/forecast", get(forecast))
        .route("/v1/resources/{id}/scores", get(scores))
        .route("/ui", get(super::ui::root_redirect))
        .route("/ui/", get(super::ui::index))
        .route("/ui/{file}", get(super::ui::asset))
        .route("/v1/telemetry", post(push))
        .route("/predict_failure", get(predict_get).post(predict_post))
        .route("/v1/predictions", get(predictions))
        .route("/v1/models", get(models))
        .route("/v1/members", get(members))
        .route("/v1/events", get(events))
        .route("/v1/models/train", post(train_models))
        .route("/v1/models/{resource_type}/{action}", post(pin_models))
        .route("/v1/schema/telemetry", get(schema))
        .route("/v1/services", get(services).post(change_service))
        .route("/v1/fleet", get(fleet_document).post(change_service))
        .route("/v1/leases", get(leases))
        .route("/v1/clock", get(clock))
        .route("/v1/autonomy", get(autonomy))
        .route("/orchestrate_migration", post(orchestrate_migration))
        .route("/v1/migrations", get(list_migrations))
        .route("/v1/migrations/{id}", get(get_migration))
        .route("/v1/migrations/{id}/cancel", post(cancel_migration))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see the API table in the README".to_owned())
}

async fn healthz(State(st): State<ApiState>) -> Json<super::health::Health> {
    let gossip = st.fleet.mesh.as_ref().map(|mesh| {
        let ms = &mesh.membership.stats;
        super::health::GossipState {
            running: mesh.membership.is_running(),
            restarts: ms
                .gossip_restarts
                .load(std::sync::atomic::Ordering::Relaxed),
            last_failure: ms.last_gossip_failure.lock().clone(),
        }
    });
    Json(super::health::assess(super::health::Observed {
        node_name: st.node.node_name.to_string(),
        // Writes failing under the history (a full disk): pushes get 507 and collected samples
        // are dropped (counted) until the writer reopens the store by itself.
        storage_failure: st.history.failure(),
        gossip,
        tasks_ended: st.tasks.ended_total(),
        tasks_recent: st.tasks.recent(),
        now_unix_ms: UnixMicros::now().as_unix_ms(),
    }))
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

async fn metrics(State(stats): State<Arc<Stats>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        stats.render(),
    )
        .into_response()
}

async fn resources(State(history): State<History>) -> Json<ResourceList> {
    let resources: Vec<ResourceView> = history
        .resources()
        .into_iter()
        .map(ResourceView::from)
        .collect();
    Json(ResourceList { resources })
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
    State(history): State<History>,
    Path(id): Path<String>,
) -> Result<Json<ResourceView>, ApiError> {
    let id = parse_id(&id)?;
    history
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
    State(history): State<History>,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<TelemetryPage>, ApiError> {
    let id = parse_id(&id)?;
    let (since, until) = window(q.since.as_deref(), q.until.as_deref())?;
    let limit = q
        .limit
        .unwrap_or(DEFAULT_QUERY_LIMIT)
        .clamp(1, MAX_QUERY_LIMIT);
    let qid = id.clone();
    let result = tokio::task::spawn_blocking(move || history.query(&qid, since, until, limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| unknown(&id))?;
    Ok(Json(TelemetryPage {
        resource_id: id.to_string(),
        since: since.to_rfc3339(),
        until: until.to_rfc3339(),
        records: result.samples.iter().map(|s| s.to_record()).collect(),
        truncated: result.truncated,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    since: Option<String>,
    until: Option<String>,
    points: Option<usize>,
}

/// The window a query names: `since` (default an hour before `until`) to `until` (default now).
fn window(since: Option<&str>, until: Option<&str>) -> Result<(UnixMicros, UnixMicros), ApiError> {
    let now = UnixMicros::now();
    let until = match until {
        Some(s) => parse_time(s, now).map_err(|e| ApiError::BadRequest(format!("until: {e}")))?,
        None => UnixMicros(now.0.saturating_add(1)),
    };
    let since = match since {
        Some(s) => parse_time(s, now).map_err(|e| ApiError::BadRequest(format!("since: {e}")))?,
        None => until.saturating_sub_micros(3_600_000_000),
    };
    Ok((since, until))
}

/// A resource's telemetry over a window in columns, at most `points` per metric (averaged per
/// bucket): what plots read.
async fn series(
    State(history): State<History>,
    Path(id): Path<String>,
    q: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<super::series::Series>, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; use ?since=1h&points=600 (since/until: RFC 3339 or a duration)",
            e.body_text()
        ))
    })?;
    let id = parse_id(&id)?;
    let (since, until) = window(q.since.as_deref(), q.until.as_deref())?;
    let points = q.points.unwrap_or(super::series::DEFAULT_POINTS);
    let qid = id.clone();
    let series = tokio::task::spawn_blocking(move || {
        let Some(result) = history
            .query(&qid, since, until, MAX_QUERY_LIMIT)
            .map_err(|e| ApiError::Internal(e.to_string()))?
        else {
            return Ok(None);
        };
        let (bucket_s, ts, metrics) = super::series::bucket(&result.samples, since, until, points);
        let events = result
            .samples
            .iter()
            .filter_map(|s| {
                s.event.map(|e| super::series::SeriesEvent {
                    ts: s.ts.0 as f64 / 1e6,
                    event: e.as_str().to_owned(),
                })
            })
            .collect();
        Ok::<_, ApiError>(Some(super::series::Series {
            resource_id: qid.to_string(),
            since: since.to_rfc3339(),
            until: until.to_rfc3339(),
            bucket_s,
            ts,
            metrics,
            events,
            samples: result.samples.len(),
            truncated: result.truncated,
        }))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??
    .ok_or_else(|| unknown(&id))?;
    Ok(Json(series))
}

/// A resource's latest prediction and each metric's forecast over the horizon, with its spread
/// and limits (the figures the failure probability is read from).
async fn forecast(
    State(predictions): State<Predictions>,
    Path(id): Path<String>,
) -> Result<Json<crate::predict::ForecastView>, ApiError> {
    let id = parse_id(&id)?;
    predictions.forecast(&id).await.map(Json).map_err(|e| match e {
        crate::predict::ForecastError::NoEngine => ApiError::NotFound(format!(
            "no forecast for {id}: it is unknown or not predicted yet; GET /v1/predictions lists the predicted resources"
        )),
        crate::predict::ForecastError::Busy => ApiError::Unavailable(
            "the prediction stage is busy or stopped; try again shortly".to_owned(),
        ),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoresQuery {
    since: Option<String>,
}

/// A resource's failure probability and anomaly score over time (the last 15 minutes per
/// second, the last day per minute).
async fn scores(
    State(predictions): State<Predictions>,
    Path(id): Path<String>,
    q: Result<Query<ScoresQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<crate::predict::ScoresView>, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; use ?since=1h (RFC 3339 or a duration)",
            e.body_text()
        ))
    })?;
    let id = parse_id(&id)?;
    let (since, _) = window(q.since.as_deref(), None)?;
    predictions.scores(&id, since).map(Json).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no scores for {id}: it is unknown or not predicted yet; GET /v1/predictions lists the predicted resources"
        ))
    })
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

async fn predictions(State(predictions): State<Predictions>) -> Json<PredictionList> {
    Json(PredictionList {
        predictions: predictions.all(),
    })
}

async fn models(State(models): State<ModelStore>) -> Json<ModelList> {
    Json(ModelList {
        engine: augur_models::MODEL_VERSION.to_owned(),
        models: models.all(),
        federation: models.decisions(),
        pinned: models.pins(),
    })
}

/// Pins a type's models to a version (`pin`, body `{"version": N}` or none for the one in use),
/// rolls back to the previous kept version and pins it (`rollback`), or unpins (`unpin`).
async fn pin_models(
    State(models): State<ModelStore>,
    axum::extract::Path((resource_type, action)): axum::extract::Path<(String, String)>,
    body: Option<Json<super::answers::PinRequest>>,
) -> Result<Json<super::answers::PinAnswer>, ApiError> {
    use crate::models::PinError;
    let to_api = |e: PinError| match e {
        PinError::UnknownType(_) | PinError::NoSuchVersion { .. } => {
            ApiError::NotFound(e.to_string())
        }
        PinError::NothingToRollBackTo(_) | PinError::Unusable { .. } => {
            ApiError::Conflict(e.to_string())
        }
        PinError::NoFiles | PinError::Io(_) => ApiError::Internal(e.to_string()),
    };
    let version = match action.as_str() {
        "pin" => {
            let v = body.map(|b| b.0.version).unwrap_or_default();
            Some(models.pin(&resource_type, v).map_err(to_api)?.version)
        }
        "rollback" => Some(models.rollback(&resource_type).map_err(to_api)?.version),
        "unpin" => {
            models.unpin(&resource_type).map_err(to_api)?;
            models.get(&resource_type).map(|m| m.meta.version)
        }
        other => {
            return Err(ApiError::NotFound(format!(
                "no model action {other:?}: pin, unpin or rollback"
            )));
        }
    };
    tracing::info!(%resource_type, %action, ?version, "models pinned, rolled back or unpinned");
    Ok(Json(super::answers::PinAnswer {
        pinned: models.pinned(&resource_type).is_some(),
        resource_type,
        version,
    }))
}

/// Trains every resource type's models now (in the trainer thread) and answers what happened.
async fn train_models(State(st): State<ApiState>) -> Result<Json<TrainAnswer>, ApiError> {
    let trainer = st.trainer.as_ref().ok_or_else(|| {
        ApiError::Unavailable("this agent runs without a model trainer".to_owned())
    })?;
    let outcomes = trainer.train_now().await.ok_or_else(|| {
        ApiError::Unavailable(
            "the trainer is busy with earlier requests or stopped; try again shortly".to_owned(),
        )
    })?;
    Ok(Json(TrainAnswer { outcomes }))
}

async fn services(State(st): State<ApiState>) -> Json<ServiceList> {
    Json(ServiceList {
        services: st.catalog.services(),
        versions: st.catalog.versions(),
        instances: crate::services::runtime::fleet_instances(
            st.node.node_name.as_str(),
            &st.instances.read(),
            &st.fleet
                .mesh
                .as_ref()
                .map(augur_mesh::Mesh::members)
                .unwrap_or_default(),
        ),
        routes: st.routes.read().clone(),
        traffic_errors: st.traffic_problems.read().clone(),
    })
}

/// A catalog change: an operator-signed document (403 if no trusted operator signed it, 400 if
/// the spec is not valid, 409 if this node holds a newer version).
async fn change_service(
    State(catalog): State<crate::services::catalog::CatalogStore>,
    body: Result<Json<CatalogChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<CatalogAnswer>, ApiError> {
    let Json(change) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; send {{\"document\": \"augur-doc:...\"}} (augur service apply makes one)",
            e.body_text()
        ))
    })?;
    let (name, version, outcome) = tokio::task::spawn_blocking(move || {
        catalog.offer_text(
            &change.document,
            UnixMicros::now().as_unix_s(),
            augur_mesh::operator::Freshness::New,
        )
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(CatalogAnswer {
        name,
        version,
        outcome: match outcome {
            augur_orchestrate::catalog::Outcome::Accepted => "accepted",
            _ => "duplicate",
        }
        .to_owned(),
    }))
}

/// `GET /v1/leases`: the lease settings in force, what this node's voter holds open, and the
/// leases this node holds.
async fn leases(
    State(st): State<ApiState>,
) -> Result<Json<augur_mesh::leases::LeaseView>, ApiError> {
    st.leases.as_ref().map(|l| Json(l.view())).ok_or_else(|| {
        ApiError::Unavailable(
            "this node is not in a mesh, and leases need one: set mesh.fleet_keys and a join token"
                .to_owned(),
        )
    })
}

/// How long a peer has to answer `/v1/clock`'s exchange.
const CLOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// This node's clock against each live peer's, measured over libp2p (one exchange each, all at
/// once).
async fn clock(State(st): State<ApiState>) -> Result<Json<super::answers::ClockAnswer>, ApiError> {
    let (Some(mesh), Some(leases)) = (st.fleet.mesh.as_ref(), st.leases.as_ref()) else {
        return Err(ApiError::Unavailable(
            "this node is not in a mesh: there are no peers to compare clocks with".to_owned(),
        ));
    };
    let peers: Vec<_> = mesh
        .members()
        .into_iter()
        .filter(|m| !m.is_self && m.status == augur_mesh::membership::MemberStatus::Alive)
        .collect();
    let asks = peers.into_iter().map(|m| async move {
        let measured = match m.peer_id.parse::<augur_mesh::PeerId>() {
            Ok(peer) => tokio::time::timeout(CLOCK_TIMEOUT, leases.clock_offset(peer))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {CLOCK_TIMEOUT:?}"))),
            Err(e) => Err(format!("not a peer id: {e}")),
        };
        let (offset_ms, rtt_ms, error) = match measured {
            Ok(c) => (Some(c.offset_ms), Some(c.rtt_ms), None),
            Err(e) => (None, None, Some(e)),
        };
        super::answers::PeerClock {
            peer_id: m.peer_id,
            node_name: m.node_name,
            offset_ms,
            rtt_ms,
            error,
        }
    });
    Ok(Json(super::answers::ClockAnswer {
        peers: futures::future::join_all(asks).await,
    }))
}

/// The fleet's autonomy settings and the cases this node considers (`augur autonomy`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct AutonomyState {
    /// The fleet document's autonomy settings (defaults without one).
    pub settings: augur_orchestrate::fleet::AutonomyDoc,
    /// Whether a fleet document is held (without one nothing can move: no lease voters).
    pub fleet_document: bool,
    pub cases: Vec<augur_orchestrate::autonomy::Report>,
}

async fn autonomy(State(st): State<ApiState>) -> Json<AutonomyState> {
    let doc = st.catalog.fleet();
    Json(AutonomyState {
        fleet_document: doc.is_some(),
        settings: doc.map(|(_, d)| d.autonomy).unwrap_or_default(),
        cases: st.autonomy.cases(),
    })
}

/// `POST /orchestrate_migration`: an operator-signed migration request; 202 with the migration
/// once its lease is granted, 409/503 with the reason when refused.
async fn orchestrate_migration(
    State(st): State<ApiState>,
    body: Result<Json<CatalogChange>, axum::extract::rejection::JsonRejection>,
) -> Result<
    (
        axum::http::StatusCode,
        Json<crate::migrate::executor::Journal>,
    ),
    ApiError,
> {
    let Json(change) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; send {{\"document\": \"augur-doc:...\"}} (augur migrate makes one)",
            e.body_text()
        ))
    })?;
    let j = super::migrations::start(&st, &change.document).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(j)))
}

async fn list_migrations(
    State(st): State<ApiState>,
) -> Json<Vec<crate::migrate::executor::Journal>> {
    Json(super::migrations::list(&st))
}

/// `POST /v1/migrations/{id}/cancel`: an operator-signed cancel; the migration rolls back.
async fn cancel_migration(
    State(st): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Result<Json<CatalogChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::migrate::executor::Journal>, ApiError> {
    let Json(change) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    super::migrations::cancel(&st, &id, &change.document)
        .await
        .map(Json)
}

async fn get_migration(
    State(st): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<crate::migrate::executor::Journal>, ApiError> {
    super::migrations::get(&st, &id).map(Json)
}

/// `GET /v1/fleet`: the fleet document this node holds (its version and TOML), 404 if none.
async fn fleet_document(
    State(catalog): State<crate::services::catalog::CatalogStore>,
) -> Result<Json<super::answers::FleetDocument>, ApiError> {
    let (version, doc) = catalog.fleet().ok_or_else(|| {
        ApiError::NotFound(
            "no fleet document yet: write one (docs/SERVICES.md, \"The fleet document\") and `augur fleet apply FILE`".to_owned(),
        )
    })?;
    Ok(Json(super::answers::FleetDocument {
        version,
        document: doc,
    }))
}

async fn members(State(fleet): State<super::Fleet>) -> Json<MemberList> {
    match &fleet.mesh {
        Some(mesh) => {
            let mut members = mesh.members();
            members.sort_by(|a, b| {
                b.is_self
                    .cmp(&a.is_self)
                    .then_with(|| a.node_name.cmp(&b.node_name))
            });
            Json(MemberList {
                mesh: true,
                peer_id: Some(mesh.peer_id().to_string()),
                members,
                message: None,
            })
        }
        None => Json(MemberList {
            mesh: false,
            peer_id: None,
            members: Vec::new(),
            message: Some("this agent is not in a fleet: no join token is configured (see `augur fleet init` and `augur fleet token`)".to_owned()),
        }),
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Topic prefixes (repeatable); none means every topic.
    #[serde(default)]
    topic: Vec<String>,
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
    State(super::Fleet { events, .. }): State<super::Fleet>,
    headers: axum::http::HeaderMap,
    q: Result<axum_extra::extract::Query<EventsQuery>, axum_extra::extract::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum_extra::extract::Query(q) = q.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; use /v1/events?topic=member&since=N&follow=true",
            e.body_text()
        ))
    })?;
    let topics = q.topic;
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
        return Ok(Json(events.since(after, &topics).0).into_response());
    }
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt as _;
    let stream = events.follow(after, topics).map(|d| {
        Ok::<_, std::convert::Infallible>(match d {
            Delivery::Event(e) => Event::default()
                .id(e.index.to_string())
                .data(serde_json::to_string(&e).unwrap_or_default()),
            Delivery::Missed { count, after } => Event::default().event("missed").data(
                serde_json::to_string(&Missed {
                    missed: count,
                    after,
                })
                .unwrap_or_default(),
            ),
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
