//! Migrations through the API (`POST /orchestrate_migration`, gRPC `OrchestrateMigration`, and
//! their listings): the request is an operator-signed document (kind `migration`, named after the
//! service, its body the request as JSON, as `augur migrate` makes it). The answer comes once the
//! lease is decided: 202 with the migration's id, or the refusal (409: busy, hold-down, budget;
//! 503: no majority of the voters). The same document sent again names the same migration.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use augur_mesh::operator::SignedDocument;

use super::{ApiError, ApiState};
use crate::migrate::executor::{Journal, MigrationRequest, RequestError};

/// The kind of a signed migration request.
pub const KIND_MIGRATION: &str = "migration";
/// How long the answer waits for the lease to be decided.
const LEASE_WAIT: Duration = Duration::from_secs(10);
/// How long a request waits for this node's own lease on the service, from a move that just
/// finished here, to be given back.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let msg = e.to_string();
        match e {
            RequestError::NotFound(_) => ApiError::NotFound(msg),
            RequestError::Invalid(_) => ApiError::BadRequest(msg),
            RequestError::Conflict(_) => ApiError::Conflict(msg),
            RequestError::Unavailable(_) => ApiError::Unavailable(msg),
        }
    }
}

/// A migration's id: from the signed request, so a request sent twice is one migration.
fn id_of(document: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    document.trim().hash(&mut h);
    format!("m{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// Checks and starts a migration; returns its journal once its lease is granted.
pub async fn start(st: &ApiState, document: &str) -> Result<Journal, ApiError> {
    let doc: SignedDocument = document.parse().map_err(|e| {
        ApiError::BadRequest(format!(
            "{e}; send {{\"document\": \"augur-doc:...\"}} (augur migrate makes one)"
        ))
    })?;
    st.catalog
        .verify(&doc, crate::sample::UnixMicros::now().as_unix_s())?;
    if doc.kind != KIND_MIGRATION {
        return Err(ApiError::BadRequest(format!(
            "a {:?} document is not a migration request",
            doc.kind
        )));
    }
    let req: MigrationRequest = serde_json::from_slice(&doc.body)
        .map_err(|e| ApiError::BadRequest(format!("the migration request does not read: {e}")))?;
    if req.service != doc.name {
        return Err(ApiError::BadRequest(format!(
            "the document names {}, its request {}",
            doc.name, req.service
        )));
    }
    let migrations = st.migrations.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "this node is not in a mesh, and migrations need one (leases from a majority)".into(),
        )
    })?;
    migrations.released(&req.service, RELEASE_WAIT).await;
    let id = migrations.request(&id_of(document), req)?;
    migrations
        .past_lease(&id, LEASE_WAIT)
        .await
        .map_err(ApiError::from)
}

/// The kind of a signed cancel (named after the migration's id).
pub const KIND_CANCEL: &str = "migration.cancel";

/// Cancels a running migration (an operator-signed request): it rolls back from the step it is
/// at (a migration already stopping its old instance finishes instead).
pub async fn cancel(st: &ApiState, id: &str, document: &str) -> Result<Journal, ApiError> {
    let doc: SignedDocument = document.parse().map_err(|e| {
        ApiError::BadRequest(format!("{e}; `augur migrations ID --cancel` makes one"))
    })?;
    st.catalog
        .verify(&doc, crate::sample::UnixMicros::now().as_unix_s())?;
    if doc.kind != KIND_CANCEL || doc.name != id {
        return Err(ApiError::BadRequest(format!(
            "expected a {KIND_CANCEL:?} document for {id}"
        )));
    }
    let j = get(st, id)?;
    if j.outcome().is_some() {
        return Err(ApiError::Conflict(format!("{id} has already finished")));
    }
    let reason = String::from_utf8_lossy(&doc.body).into_owned();
    let migrations = st.migrations.as_ref().expect("found above");
    if !migrations.cancel(id, &reason).await {
        return Err(ApiError::Conflict(format!(
            "{id} is not running on this node"
        )));
    }
    get(st, id)
}

/// Every migration this node coordinated, newest first.
pub fn list(st: &ApiState) -> Vec<Journal> {
    st.migrations
        .as_ref()
        .map(crate::migrate::executor::Migrations::list)
        .unwrap_or_default()
}

pub fn get(st: &ApiState, id: &str) -> Result<Journal, ApiError> {
    st.migrations
        .as_ref()
        .and_then(|m| m.get(id))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no migration {id} on this node (each node lists the migrations it coordinates)"
            ))
        })
}
