//! The HTTP API's answers, as types: the handlers encode them and the CLI decodes the same types
//! (a field renamed on one side fails to compile on the other, not silently at run time).

use augur_mesh::membership::Member;
use augur_models::trained::ModelMeta;
use augur_proto::TelemetryRecord;
use serde::{Deserialize, Serialize};

use crate::history::ResourceSummary;
use crate::models::TrainOutcome;
use crate::predict::PredictionView;

/// A resource as the HTTP API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceView {
    pub resource_id: String,
    pub resource_type: String,
    pub first_ts: String,
    pub last_ts: String,
    pub samples: u64,
    pub bytes: u64,
    pub latest: Option<TelemetryRecord>,
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
            latest: r.latest.map(|s| s.to_record()),
        }
    }
}

/// `GET /v1/resources`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceList {
    pub resources: Vec<ResourceView>,
}

/// `GET /v1/resources/{id}/telemetry`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetryPage {
    pub resource_id: String,
    pub since: String,
    pub until: String,
    pub records: Vec<TelemetryRecord>,
    /// More samples matched than the limit.
    pub truncated: bool,
}

/// `GET /v1/predictions`: riskiest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictionList {
    pub predictions: Vec<PredictionView>,
}

/// `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// The engine the models serve.
    pub engine: String,
    pub models: Vec<ModelMeta>,
    /// The latest decisions on models merged from the fleet (adopted, rejected, cold start),
    /// newest last.
    #[serde(default)]
    pub federation: Vec<crate::models::FederationDecision>,
    /// Types an operator pinned, with their version.
    #[serde(default)]
    pub pinned: std::collections::BTreeMap<String, u64>,
}

/// `POST /v1/models/{type}/pin|unpin|rollback`: what is in use now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinAnswer {
    pub resource_type: String,
    /// The version in use (none after an unpin of a type without models).
    pub version: Option<u64>,
    pub pinned: bool,
}

/// The body of `POST /v1/models/{type}/pin` (no version: the one in use).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PinRequest {
    #[serde(default)]
    pub version: Option<u64>,
}

/// `POST /v1/models/train`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TrainAnswer {
    pub outcomes: Vec<TrainOutcome>,
}

/// `GET /v1/members`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberList {
    /// Whether this agent is in a fleet.
    pub mesh: bool,
    /// This node's PeerId, when in a fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    pub members: Vec<Member>,
    /// What to do, when not in a fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /v1/clock`: this node's clock against each live peer's (`augur doctor`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockAnswer {
    pub peers: Vec<PeerClock>,
}

/// One peer's clock against this node's, or why it could not be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerClock {
    pub peer_id: String,
    pub node_name: Option<String>,
    /// The peer's clock minus this node's, in milliseconds (positive: the peer is ahead).
    pub offset_ms: Option<f64>,
    /// The round trip of the exchange; the offset is right within half of it.
    pub rtt_ms: Option<f64>,
    pub error: Option<String>,
}

/// The `missed` notice of the event stream: `missed` events after index `after` were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missed {
    pub missed: u64,
    pub after: u64,
}

/// `GET /v1/services`: the catalog as this node holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<crate::services::catalog::ServiceEntry>,
    /// Every service's version, deleted ones included: a change must carry a higher one.
    pub versions: std::collections::BTreeMap<String, u64>,
    /// Every instance in the fleet: this node's, and the live members' as they publish them.
    #[serde(default)]
    pub instances: Vec<crate::services::runtime::PlacedInstance>,
    /// Where this node's proxies send each service's traffic: backend address -> weight.
    #[serde(default)]
    pub routes: augur_proxy::Routes,
    /// What this node's proxies cannot do now (a port in use, HAProxy out of step).
    #[serde(default)]
    pub traffic_errors: Vec<augur_mesh::TrafficProblem>,
}

/// `POST /v1/services`: a signed catalog change (`augur-doc:...`, made by `augur service apply`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogChange {
    pub document: String,
}

/// What became of a catalog change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogAnswer {
    pub name: String,
    pub version: u64,
    /// `accepted`, or `duplicate` when this node had it already.
    pub outcome: String,
}

/// `GET /v1/fleet`: the fleet document held.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetDocument {
    pub version: u64,
    pub document: augur_orchestrate::fleet::FleetDoc,
}
