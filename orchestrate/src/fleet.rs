//! The fleet document: what every node must agree on before anything moves. It names the lease
//! voters and the disruption budget, is signed by an operator, versioned and replicated like a
//! service spec (kind `fleet`), and changes only by a newer signed version, never by what one
//! node's gossip says (two partitions can each see a majority of a different view; they cannot
//! each hold a different signed version accepted by a majority of one voter list).
//!
//! ```toml
//! [leases]
//! voters = ["12D3KooW...", "12D3KooW...", "12D3KooW..."]
//! max_migrations = 1
//! max_migrations_per_zone = 1
//! hold_down = "10m"
//! duration = "15s"
//!
//! [autonomy]        # optional
//! mode = "act"      # or "shadow": decide and publish, move nothing
//! dwell = "3s"
//! takeover = "10s"
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// Voters at most: every lease asks each of them twice.
pub const MAX_VOTERS: usize = 15;
/// The most moves at once a budget may allow.
pub const MAX_BUDGET: u32 = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetDoc {
    pub leases: LeaseSettings,
    /// How the fleet acts on its predictions (defaults when absent).
    #[serde(default)]
    pub autonomy: AutonomyDoc,
}

/// How the fleet acts on predicted failures and dead nodes (`orchestrate::autonomy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutonomyDoc {
    /// `act` (the default): move work off what is predicted to fail; `shadow`: decide, publish
    /// what would be done as events, move nothing. A service's own `autonomy` may make it
    /// `shadow` too.
    #[serde(default)]
    pub mode: crate::autonomy::Mode,
    /// How long a prediction must stay above its threshold before anyone acts (damps a
    /// flapping predictor). At most 10m.
    #[serde(default = "three_seconds", with = "humantime_serde")]
    pub dwell: Duration,
    /// How long each peer in a move's election order gives the ones before it to start, before
    /// it takes over. 1s to 10m.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub takeover: Duration,
}

impl Default for AutonomyDoc {
    fn default() -> Self {
        Self {
            mode: crate::autonomy::Mode::Act,
            dwell: three_seconds(),
            takeover: ten_seconds(),
        }
    }
}

fn three_seconds() -> Duration {
    Duration::from_secs(3)
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// Who grants the right to act, and how much may move at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSettings {
    /// The peer ids of the lease voters (`augur status` shows a node's). A lease needs a
    /// majority of them. For a small fleet list every node; for a large one 3 or 5 nodes in
    /// different zones. At most 15.
    pub voters: Vec<String>,
    /// Moves running at once in the whole fleet, at most (1 to 16).
    #[serde(default = "one")]
    pub max_migrations: u32,
    /// Moves running at once from one zone, at most (0: no limit per zone; at most 16).
    #[serde(default = "one")]
    pub max_migrations_per_zone: u32,
    /// After a service moved, no new move of it for this long (damps flapping).
    #[serde(default = "ten_minutes", with = "humantime_serde")]
    pub hold_down: Duration,
    /// How long a lease lasts unless renewed (the holder renews it at half-time): what a dead
    /// holder costs before another node may act. 2 s to 5 min.
    #[serde(default = "fifteen_seconds", with = "humantime_serde")]
    pub duration: Duration,
}

fn one() -> u32 {
    1
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

fn fifteen_seconds() -> Duration {
    Duration::from_secs(15)
}

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Whether `s` looks like a libp2p peer id in its text form (base58btc, no `0OIl`).
fn peer_like(s: &str) -> bool {
    (32..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() && !matches!(c, '0' | 'O' | 'I' | 'l'))
}

impl FleetDoc {
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let doc: FleetDoc = toml::from_str(text).map_err(|e| err("fleet", e.message()))?;
        doc.validate()?;
        Ok(doc)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let l = &self.leases;
        if l.voters.is_empty() || l.voters.len() > MAX_VOTERS {
            return Err(err(
                "leases.voters",
                format!("1 to {MAX_VOTERS} peer ids, got {}", l.voters.len()),
            ));
        }
        for (i, v) in l.voters.iter().enumerate() {
            if !peer_like(v) {
                return Err(err(
                    "leases.voters",
                    format!("{v:?} is not a peer id (`augur status` shows a node's)"),
                ));
            }
            if l.voters[..i].contains(v) {
                return Err(err("leases.voters", format!("{v} is listed twice")));
            }
        }
        if !(1..=MAX_BUDGET).contains(&l.max_migrations) {
            return Err(err(
                "leases.max_migrations",
                format!("1 to {MAX_BUDGET}, got {}", l.max_migrations),
            ));
        }
        if l.max_migrations_per_zone > MAX_BUDGET {
            return Err(err(
                "leases.max_migrations_per_zone",
                format!(
                    "0 (no limit) to {MAX_BUDGET}, got {}",
                    l.max_migrations_per_zone
                ),
            ));
        }
        if !(Duration::from_secs(2)..=crate::lease::wire::MAX_DURATION).contains(&l.duration) {
            return Err(err(
                "leases.duration",
                format!("2s to 5m, got {:?}", l.duration),
            ));
        }
        if l.hold_down > Duration::from_secs(86_400) {
            return Err(err(
                "leases.hold_down",
                format!("at most 24h, got {:?}", l.hold_down),
            ));
        }
        let a = &self.autonomy;
        if a.dwell > Duration::from_secs(600) {
            return Err(err(
                "autonomy.dwell",
                format!("at most 10m, got {:?}", a.dwell),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&a.takeover) {
            return Err(err(
                "autonomy.takeover",
                format!("1s to 10m, got {:?}", a.takeover),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWGzbnqJ4YQ2fVkqpAbbGQ3s8bMZaB3L1NvsBPXKaT4NmF";
    const PEER2: &str = "12D3KooWQe5DMnFmDPTcMbN8rNWq2ZvgWaD9Yq8cvCxZXtH3sFQa";

    #[test]
    fn defaults_apply_and_bad_fields_are_named() {
        let d = FleetDoc::from_toml(&format!("[leases]\nvoters = [\"{PEER}\"]\n")).expect("valid");
        assert_eq!(d.leases.max_migrations, 1);
        assert_eq!(d.leases.max_migrations_per_zone, 1);
        assert_eq!(d.leases.hold_down, Duration::from_secs(600));
        assert_eq!(d.leases.duration, Duration::from_secs(15));
        assert_eq!(FleetDoc::from_toml(&d.to_toml()), Ok(d.clone()));
        let cases = [
            ("voters = []", "leases.voters"),
            ("voters = [\"node-1\"]", "leases.voters"),
            (
                &format!("voters = [\"{PEER}\", \"{PEER}\"]") as &str,
                "leases.voters",
            ),
            (
                &format!("voters = [\"{PEER}\"]\nmax_migrations = 0"),
                "leases.max_migrations",
            ),
            (
                &format!("voters = [\"{PEER2}\"]\nmax_migrations_per_zone = 99"),
                "leases.max_migrations_per_zone",
            ),
            (
                &format!("voters = [\"{PEER}\"]\nduration = \"1s\""),
                "leases.duration",
            ),
            (
                &format!("voters = [\"{PEER}\"]\nhold_down = \"2d\""),
                "leases.hold_down",
            ),
            (&format!("voters = [\"{PEER}\"]\nvoter = 1"), "fleet"),
        ];
        for (body, field) in cases {
            let e = FleetDoc::from_toml(&format!("[leases]\n{body}\n")).expect_err(body);
            assert_eq!(e.field, field, "{body}: {e}");
        }
        // Autonomy: defaults, a shadow fleet, and its bad fields named.
        assert_eq!(d.autonomy, AutonomyDoc::default());
        let leases = format!("[leases]\nvoters = [\"{PEER}\"]\n");
        let shadow = FleetDoc::from_toml(&format!(
            "{leases}[autonomy]\nmode = \"shadow\"\ndwell = \"5s\"\n"
        ))
        .expect("valid");
        assert_eq!(shadow.autonomy.mode, crate::autonomy::Mode::Shadow);
        assert_eq!(shadow.autonomy.dwell, Duration::from_secs(5));
        assert_eq!(FleetDoc::from_toml(&shadow.to_toml()), Ok(shadow));
        for (body, field) in [
            ("dwell = \"1h\"", "autonomy.dwell"),
            ("takeover = \"0s\"", "autonomy.takeover"),
            ("mode = \"yolo\"", "fleet"),
        ] {
            let e = FleetDoc::from_toml(&format!("{leases}[autonomy]\n{body}\n")).expect_err(body);
            assert_eq!(e.field, field, "{body}: {e}");
        }
    }
}
