//! What lease voters and proposers say to each other, and the names of what they lease. Every
//! field here arrives from the network: [`Request::validate`] bounds it before a voter looks at it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Keys one request may name, at most (a service, a fleet slot per budget unit, a zone slot per
/// budget unit: a budget is a handful).
pub const MAX_KEYS: usize = 32;
/// The longest key, proposer name or note.
pub const MAX_NAME: usize = 200;
/// The longest lease a voter grants.
pub const MAX_DURATION: Duration = Duration::from_secs(300);

/// The key of the lease on moving a service's instances.
pub fn service_key(service: &str) -> String {
    format!("service/{service}")
}

/// The key of slot `i` of the fleet's disruption budget.
pub fn fleet_slot(i: u32) -> String {
    format!("budget/fleet/{i}")
}

/// The key of slot `i` of zone `zone`'s disruption budget.
pub fn zone_slot(zone: &str, i: u32) -> String {
    format!("budget/zone/{zone}/{i}")
}

/// Whether a key is a service's (its leases end in a hold-down when they moved something).
pub fn is_service_key(key: &str) -> bool {
    key.starts_with("service/")
}

/// A proposal number, ordered by round first, and never the same for two proposals: a proposer's
/// rounds rise within one lease, each lease of a node has its own id, and each start of the node
/// its own nonce. The round of the ballot a lease was won with is its fencing epoch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    pub round: u64,
    /// The proposing node (its peer id).
    pub proposer: String,
    /// Drawn at each start of the proposer, so a restarted one never reuses a ballot.
    pub nonce: u64,
    /// The lease asked for (a node's next lease never reuses its last one's ballots).
    pub lease_id: u64,
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.proposer)
    }
}

/// What a lease grants: to `holder`, the `keys`, for `duration` from each voter's acceptance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub holder: String,
    /// Names the lease across its renewals (a holder's renewal is not someone else's lease).
    pub lease_id: u64,
    pub keys: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// What it is for, for people reading a voter's state ("move web/web-1 from n2").
    pub note: String,
}

/// A request to a voter. `config` is the version of the signed fleet document the sender's voter
/// set and budget come from; a voter under another version refuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Phase 1: promise to refuse lower ballots on `keys`, and say what is held there.
    Prepare {
        config: u64,
        ballot: Ballot,
        keys: Vec<String>,
    },
    /// Phase 2: accept `grant` under `ballot` (the one promised).
    Propose {
        config: u64,
        ballot: Ballot,
        grant: Grant,
    },
    /// The holder gives the lease back before it ends; `moved` starts the service's hold-down.
    Release {
        lease_id: u64,
        keys: Vec<String>,
        moved: bool,
    },
}

/// A request that cannot be valid, whatever the voter's state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Invalid {
    #[error("no keys named")]
    NoKeys,
    #[error("{0} keys named; at most {MAX_KEYS}")]
    TooManyKeys(usize),
    #[error(
        "a key, proposer or note is empty, longer than {MAX_NAME} bytes, or has control characters"
    )]
    BadName,
    #[error("the ballot is not the sender's (it names {0})")]
    NotTheSender(String),
    #[error("a lease of {0:?}: it must be above zero and at most {MAX_DURATION:?}")]
    BadDuration(Duration),
    #[error("the grant's holder is not the ballot's proposer")]
    HolderMismatch,
    #[error("a key is named twice")]
    DuplicateKey,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control)
}

fn keys_ok(keys: &[String]) -> Result<(), Invalid> {
    if keys.is_empty() {
        return Err(Invalid::NoKeys);
    }
    if keys.len() > MAX_KEYS {
        return Err(Invalid::TooManyKeys(keys.len()));
    }
    if !keys.iter().all(|k| name_ok(k)) {
        return Err(Invalid::BadName);
    }
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != keys.len() {
        return Err(Invalid::DuplicateKey);
    }
    Ok(())
}

impl Request {
    /// Checks what can be checked without the voter's state, `from` being the authenticated peer
    /// that sent it.
    pub fn validate(&self, from: &str) -> Result<(), Invalid> {
        let ballot_ok = |b: &Ballot| {
            if !name_ok(&b.proposer) {
                Err(Invalid::BadName)
            } else if b.proposer != from {
                Err(Invalid::NotTheSender(b.proposer.clone()))
            } else {
                Ok(())
            }
        };
        match self {
            Request::Prepare { ballot, keys, .. } => {
                ballot_ok(ballot)?;
                keys_ok(keys)
            }
            Request::Propose { ballot, grant, .. } => {
                ballot_ok(ballot)?;
                keys_ok(&grant.keys)?;
                if grant.holder != ballot.proposer {
                    return Err(Invalid::HolderMismatch);
                }
                if grant.duration.is_zero() || grant.duration > MAX_DURATION {
                    return Err(Invalid::BadDuration(grant.duration));
                }
                if grant.note.len() > MAX_NAME || grant.note.chars().any(char::is_control) {
                    return Err(Invalid::BadName);
                }
                Ok(())
            }
            Request::Release { keys, .. } => keys_ok(keys),
        }
    }
}

/// A lease a voter holds as accepted and not yet ended, as it reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    pub key: String,
    pub holder: String,
    pub lease_id: u64,
    pub round: u64,
    /// Left of it on the voter's clock.
    #[serde(with = "humantime_serde")]
    pub remaining: Duration,
}

/// A voter's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Promised: `ballot` and no lower one; what the voter holds on the keys asked about.
    Promise {
        ballot: Ballot,
        open: Vec<Open>,
        /// Service keys in their hold-down, with the time left.
        hold_down: Vec<(String, Duration)>,
    },
    Accepted {
        ballot: Ballot,
    },
    Released {
        lease_id: u64,
    },
    Refused {
        /// The ballot of the request refused (none for a release).
        ballot: Option<Ballot>,
        why: Refusal,
    },
}

/// Why a voter refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("a higher ballot was promised (round {round})")]
    Outbid { round: u64 },
    #[error("the voter is at fleet document version {held}, the request at another")]
    Config { held: u64 },
    #[error("{key} is held by {holder}")]
    Held { key: String, holder: String },
    #[error("{key} moved recently; hold-down for {remaining:?} more")]
    HoldDown { key: String, remaining: Duration },
    #[error("the voter tracks as many keys as it may; none can be forgotten now")]
    Full,
    #[error("invalid request: {0}")]
    Invalid(Invalid),
}
