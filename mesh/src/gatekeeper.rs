//! Admission on libp2p connections, without I/O: which connected peers are admitted, refused or
//! revoked, decided from the join tokens they present and the time. The swarm task (`crate::swarm`)
//! feeds it connection events and token exchanges and carries out the [`Gate`] actions (send our
//! token, answer, blacklist in gossipsub, disconnect, report).
//!
//! Every connection's peer must present a token the trusted fleet keys sign within the admission
//! timeout, or it is refused and disconnected; an admitted peer's credential (expiry, fleet key) is
//! rechecked on every sweep for as long as its connection lives.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::PeerId;

use crate::admission::{FleetPublicKey, JoinToken, Trust};
use crate::clock::Now;

/// What the swarm tells the gatekeeper.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A connection to `peer` is established.
    Connected(PeerId),
    /// The last connection to `peer` closed.
    Closed(PeerId),
    /// `peer` asked to be admitted with `token`; the answer goes back on the request.
    Request { peer: PeerId, token: String },
    /// `peer` answered our request: its own token when it admitted us, or why not.
    Response {
        peer: PeerId,
        token: Option<String>,
        error: Option<String>,
    },
    /// The periodic check ([`crate::swarm::ADMISSION_SWEEP`]).
    Sweep,
}

/// What the swarm carries out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Keep the peer out of gossipsub until it is admitted.
    Blacklist(PeerId),
    /// Send our token to the peer.
    SendToken(PeerId),
    /// Answer a request: admitted (with our token) or not, and why.
    Answer {
        admitted: bool,
        error: Option<String>,
    },
    /// The peer is admitted: into gossipsub, reported.
    Admit(PeerId),
    /// The peer did not present a valid token: reported, disconnected.
    Refuse { peer: PeerId, reason: String },
    /// An admitted peer's credential ended: out of gossipsub, reported, disconnected.
    Revoke { peer: PeerId, reason: String },
    /// An admitted peer's last connection closed.
    Gone(PeerId),
}

/// The gatekeeper of one node.
#[derive(Debug)]
pub struct Gatekeeper {
    trusted: Trust,
    admission_timeout: Duration,
    /// Connected peers not yet admitted, with their deadline.
    pending: HashMap<PeerId, tokio::time::Instant>,
    /// The credential each admitted peer presented: its expiry and fleet key.
    credentials: HashMap<PeerId, (u64, FleetPublicKey)>,
    /// Peers we sent our token to.
    asked: HashSet<PeerId>,
}

impl Gatekeeper {
    pub fn new(trusted: Trust, admission_timeout: Duration) -> Self {
        Self {
            trusted,
            admission_timeout,
            pending: HashMap::new(),
            credentials: HashMap::new(),
            asked: HashSet::new(),
        }
    }

    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.credentials.contains_key(peer)
    }

    fn verify(&self, peer: &PeerId, token: &str, now: Now) -> Result<JoinToken, String> {
        let t: JoinToken = token
            .parse()
            .map_err(|e: crate::admission::AdmissionError| e.to_string())?;
        self.trusted
            .verify(&t, peer, now.unix_ms / 1000)
            .map_err(|e| e.to_string())?;
        Ok(t)
    }

    fn decide(&mut self, peer: PeerId, verdict: Result<JoinToken, String>, out: &mut Vec<Gate>) {
        self.pending.remove(&peer);
        match verdict {
            Ok(token) => {
                let new = self
                    .credentials
                    .insert(peer, (token.expires_unix_s, token.fleet))
                    .is_none();
                if new {
                    out.push(Gate::Admit(peer));
                }
            }
            Err(reason) => out.push(Gate::Refuse { peer, reason }),
        }
    }

    pub fn on_event(&mut self, input: Input, now: Now) -> Vec<Gate> {
        let mut out = Vec::new();
        match input {
            Input::Connected(peer) if !self.is_admitted(&peer) => {
                out.push(Gate::Blacklist(peer));
                self.pending
                    .entry(peer)
                    .or_insert(now.mono + self.admission_timeout);
                if self.asked.insert(peer) {
                    out.push(Gate::SendToken(peer));
                }
            }
            Input::Connected(_) => {}
            Input::Closed(peer) => {
                self.asked.remove(&peer);
                // Gone before it was admitted: refused (a peer that refuses our token hangs up
                // at once, and its own request may never arrive).
                if self.pending.remove(&peer).is_some() {
                    out.push(Gate::Refuse {
                        peer,
                        reason: "disconnected before presenting a valid join token".to_owned(),
                    });
                }
                if self.credentials.remove(&peer).is_some() {
                    out.push(Gate::Gone(peer));
                }
            }
            Input::Request { peer, token } => {
                let verdict = self.verify(&peer, &token, now);
                out.push(Gate::Answer {
                    admitted: verdict.is_ok(),
                    error: verdict.as_ref().err().cloned(),
                });
                self.decide(peer, verdict, &mut out);
            }
            Input::Response { peer, token, error } => {
                let verdict = match token {
                    Some(t) => self.verify(&peer, &t, now),
                    None => Err(format!(
                        "the peer refused our token: {}",
                        error.unwrap_or_default()
                    )),
                };
                self.decide(peer, verdict, &mut out);
            }
            Input::Sweep => {
                let late: Vec<PeerId> = self
                    .pending
                    .iter()
                    .filter(|(_, d)| **d <= now.mono)
                    .map(|(p, _)| *p)
                    .collect();
                for peer in late {
                    self.pending.remove(&peer);
                    out.push(Gate::Refuse {
                        peer,
                        reason: "no valid join token within the admission timeout".to_owned(),
                    });
                }
                // Admission holds for the life of a connection: a token that expired, or whose
                // fleet key was removed, ends it.
                let now_s = now.unix_ms / 1000;
                let mut revoked: Vec<(PeerId, String)> = self
                    .credentials
                    .iter()
                    .filter_map(|(p, (expires, fleet))| {
                        if now_s >= *expires {
                            Some((*p, format!("its join token expired at {expires}")))
                        } else if !self.trusted.trusts(fleet) {
                            Some((
                                *p,
                                format!("fleet key {} is no longer trusted", fleet.fleet_id()),
                            ))
                        } else {
                            None
                        }
                    })
                    .collect();
                revoked.sort_by_key(|(p, _)| *p);
                for (peer, reason) in revoked {
                    self.credentials.remove(&peer);
                    out.push(Gate::Revoke { peer, reason });
                }
            }
        }
        out
    }
}

impl augur_orchestrate::Machine for Gatekeeper {
    type Event = Input;
    type Action = Gate;
    type Now = Now;

    fn on_event(&mut self, event: Input, now: Now) -> Vec<Gate> {
        Gatekeeper::on_event(self, event, now)
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;

    use super::*;
    use crate::admission::FleetKey;

    const T0_MS: u64 = 1_800_000_000_000;

    fn peer(seed: u8) -> PeerId {
        Keypair::ed25519_from_bytes([seed; 32])
            .expect("key")
            .public()
            .to_peer_id()
    }

    /// Each case: steps (input, ms after start), and the actions expected after each step.
    #[test]
    fn admission_decisions() {
        let fleet = FleetKey::from_seed([1; 32]);
        let other = FleetKey::from_seed([2; 32]);
        let (p, q) = (peer(7), peer(8));
        let good = fleet.issue(p, T0_MS / 1000 + 60).to_string();
        let foreign = other.issue(p, T0_MS / 1000 + 3600).to_string();
        let stolen = fleet.issue(q, T0_MS / 1000 + 3600).to_string();
        let refused = |peer, reason: &str| Gate::Refuse {
            peer,
            reason: reason.to_owned(),
        };
        type Steps = Vec<(Input, u64, Vec<Gate>)>;
        let cases: Vec<(&str, Steps)> = vec![
            (
                "a peer with a good token is admitted, once",
                vec![
                    (
                        Input::Connected(p),
                        0,
                        vec![Gate::Blacklist(p), Gate::SendToken(p)],
                    ),
                    (
                        Input::Request {
                            peer: p,
                            token: good.clone(),
                        },
                        10,
                        vec![
                            Gate::Answer {
                                admitted: true,
                                error: None,
                            },
                            Gate::Admit(p),
                        ],
                    ),
                    (
                        Input::Response {
                            peer: p,
                            token: Some(good.clone()),
                            error: None,
                        },
                        20,
                        vec![],
                    ),
                    (Input::Connected(p), 30, vec![]),
                    (Input::Closed(p), 40, vec![Gate::Gone(p)]),
                ],
            ),
            (
                "a token of an untrusted fleet, or another peer's, is refused",
                vec![
                    (
                        Input::Connected(p),
                        0,
                        vec![Gate::Blacklist(p), Gate::SendToken(p)],
                    ),
                    (
                        Input::Response {
                            peer: p,
                            token: Some(stolen.clone()),
                            error: None,
                        },
                        5,
                        vec![refused(p, "token")],
                    ),
                    (
                        Input::Request {
                            peer: p,
                            token: foreign.clone(),
                        },
                        10,
                        vec![
                            Gate::Answer {
                                admitted: false,
                                error: Some("token".into()),
                            },
                            refused(p, "token"),
                        ],
                    ),
                ],
            ),
            (
                "silence past the admission timeout is refused at the next sweep",
                vec![
                    (
                        Input::Connected(p),
                        0,
                        vec![Gate::Blacklist(p), Gate::SendToken(p)],
                    ),
                    (Input::Sweep, 1_900, vec![]),
                    (
                        Input::Sweep,
                        2_100,
                        vec![refused(
                            p,
                            "no valid join token within the admission timeout",
                        )],
                    ),
                ],
            ),
            (
                "hanging up before admission is a refusal",
                vec![
                    (
                        Input::Connected(p),
                        0,
                        vec![Gate::Blacklist(p), Gate::SendToken(p)],
                    ),
                    (
                        Input::Closed(p),
                        10,
                        vec![refused(
                            p,
                            "disconnected before presenting a valid join token",
                        )],
                    ),
                ],
            ),
            (
                "an admitted peer is revoked when its token expires",
                vec![
                    (
                        Input::Connected(p),
                        0,
                        vec![Gate::Blacklist(p), Gate::SendToken(p)],
                    ),
                    (
                        Input::Request {
                            peer: p,
                            token: good.clone(),
                        },
                        10,
                        vec![
                            Gate::Answer {
                                admitted: true,
                                error: None,
                            },
                            Gate::Admit(p),
                        ],
                    ),
                    (Input::Sweep, 59_000, vec![]),
                    (
                        Input::Sweep,
                        60_000,
                        vec![Gate::Revoke {
                            peer: p,
                            reason: format!("its join token expired at {}", T0_MS / 1000 + 60),
                        }],
                    ),
                    (Input::Closed(p), 60_100, vec![]),
                ],
            ),
        ];
        for (name, steps) in cases {
            let mut g = Gatekeeper::new(Trust::new(vec![fleet.public()]), Duration::from_secs(2));
            let start = tokio::time::Instant::now();
            for (i, (input, ms, want)) in steps.into_iter().enumerate() {
                let now = Now {
                    mono: start + Duration::from_millis(ms),
                    unix_ms: T0_MS + ms,
                };
                let got = g.on_event(input, now);
                // Refusal reasons from token checks are the checker's messages: compared by kind.
                let shape = |a: &Gate| match a {
                    Gate::Refuse { peer, reason }
                        if !reason.starts_with("no valid")
                            && !reason.starts_with("disconnected") =>
                    {
                        Gate::Refuse {
                            peer: *peer,
                            reason: "token".into(),
                        }
                    }
                    Gate::Answer { admitted, error } => Gate::Answer {
                        admitted: *admitted,
                        error: error.as_ref().map(|_| "token".into()),
                    },
                    other => other.clone(),
                };
                let got: Vec<Gate> = got.iter().map(shape).collect();
                assert_eq!(got, want, "{name}: step {i}");
            }
        }
    }

    /// Removing a fleet key from the trusted set revokes its admitted peers at the next sweep.
    #[test]
    fn a_removed_fleet_key_revokes_its_peers() {
        let fleet = FleetKey::from_seed([1; 32]);
        let trust = Trust::new(vec![fleet.public()]);
        let p = peer(7);
        let mut g = Gatekeeper::new(trust.clone(), Duration::from_secs(2));
        let now = Now {
            mono: tokio::time::Instant::now(),
            unix_ms: T0_MS,
        };
        g.on_event(Input::Connected(p), now);
        let token = fleet.issue(p, T0_MS / 1000 + 3600).to_string();
        assert!(
            g.on_event(Input::Request { peer: p, token }, now)
                .contains(&Gate::Admit(p))
        );
        assert!(g.on_event(Input::Sweep, now).is_empty());
        trust.set(Vec::new());
        let acts = g.on_event(Input::Sweep, now);
        assert!(
            matches!(&acts[..], [Gate::Revoke { peer, .. }] if *peer == p),
            "{acts:?}"
        );
        assert!(!g.is_admitted(&p));
    }
}
