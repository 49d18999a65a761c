//! One lease voter (PaxosLease's acceptor) as a state machine. It answers prepares, proposals and
//! releases; every answer that changes what it promised or accepted comes after a
//! [`Action::Persist`] of its whole state, which the task around it writes durably before it sends
//! the answer. Times are monotonic (`Duration` since any fixed start): what it persists carries
//! none, and [`Voter::restore`] treats every accepted lease as open for its full duration again and
//! every hold-down as just begun, so a restart can only make it more careful.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::wire::{Ballot, Grant, Open, Refusal, Reply, Request, is_service_key};
use crate::Machine;

/// Keys a voter tracks at most. Past it, keys with nothing open and no hold-down are forgotten
/// (their promises are replaced by a floor every later round must pass).
pub const MAX_TRACKED: usize = 4096;

/// A lease accepted on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub ballot: Ballot,
    pub grant: Grant,
    /// Ends here on the voter's clock (not persisted: a restored voter starts it again).
    #[serde(skip)]
    pub until: Duration,
}

/// What a voter knows of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    pub promised: Option<Ballot>,
    pub accepted: Option<Accepted>,
    /// The service moved: no new lease on it before this time (persisted as "in hold-down").
    #[serde(with = "hold_down_flag")]
    pub hold_down_until: Option<Duration>,
    /// The lease whose end started the hold-down (holder, lease id): that lease (its id) may take
    /// the key again: its holder restarted mid-way, or a successor took over the move of a holder
    /// that died, to finish or undo it. A release ends the exemption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_down_lease: Option<(String, u64)>,
}

/// Persisted as a flag: the time is the voter's clock, meaningless after a restart.
mod hold_down_flag {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(v.is_some())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(bool::deserialize(d)?.then_some(Duration::ZERO))
    }
}

/// Everything a voter persists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterState {
    pub keys: BTreeMap<String, KeyState>,
    /// Rounds at or below this are refused on keys not tracked (some were forgotten).
    pub floor: u64,
}

/// What a voter is told.
#[derive(Clone, Debug)]
pub enum Event {
    /// A request from the authenticated peer `from`; `id` comes back with the reply.
    Request {
        from: String,
        id: u64,
        request: Request,
    },
    /// The fleet document changed: requests under another version are refused from now.
    Config { version: u64, hold_down: Duration },
}

/// What a voter asks its task to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write this durably before anything after it is done.
    Persist(VoterState),
    Reply {
        id: u64,
        reply: Reply,
    },
}

/// Counters of what a voter refused, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    pub invalid: u64,
    pub config: u64,
    pub outbid: u64,
    pub held: u64,
    pub hold_down: u64,
    pub full: u64,
}

#[derive(Debug)]
pub struct Voter {
    config: u64,
    hold_down: Duration,
    state: VoterState,
    pub refusals: Refusals,
}

impl Voter {
    /// A voter with nothing promised, under fleet document `config`.
    pub fn new(config: u64, hold_down: Duration) -> Self {
        Self::restore(VoterState::default(), config, hold_down, Duration::ZERO)
    }

    /// A voter from its persisted state, at `now`: every lease it had accepted is open for its
    /// full duration from now, every hold-down starts again.
    pub fn restore(mut state: VoterState, config: u64, hold_down: Duration, now: Duration) -> Self {
        for k in state.keys.values_mut() {
            if let Some(a) = &mut k.accepted {
                a.until = now + a.grant.duration;
            }
            if k.hold_down_until.is_some() {
                k.hold_down_until = Some(now + hold_down);
            }
        }
        Self {
            config,
            hold_down,
            state,
            refusals: Refusals::default(),
        }
    }

    pub fn state(&self) -> &VoterState {
        &self.state
    }

    /// Leases open at `now`, one row per key.
    pub fn open(&self, now: Duration) -> Vec<Open> {
        self.state
            .keys
            .iter()
            .filter_map(|(key, k)| {
                let a = k.accepted.as_ref().filter(|a| a.until > now)?;
                Some(Open {
                    key: key.clone(),
                    holder: a.grant.holder.clone(),
                    lease_id: a.grant.lease_id,
                    round: a.ballot.round,
                    remaining: a.until - now,
                })
            })
            .collect()
    }

    /// Ends what has ended by `now`: an accepted lease past its time is gone, and a service's
    /// starts its hold-down (its holder may have moved it before it died).
    fn expire(&mut self, now: Duration) {
        let hold_down = self.hold_down;
        for (key, k) in &mut self.state.keys {
            if k.accepted.as_ref().is_some_and(|a| a.until <= now) {
                let a = k.accepted.take().expect("checked just above");
                if is_service_key(key) {
                    k.hold_down_until = Some(a.until + hold_down);
                    k.hold_down_lease = Some((a.grant.holder, a.grant.lease_id));
                }
            }
            if k.hold_down_until.is_some_and(|t| t <= now) {
                k.hold_down_until = None;
                k.hold_down_lease = None;
            }
        }
    }

    /// Makes room for `new` more keys, forgetting idle ones (their promises raise the floor).
    fn room_for(&mut self, new: usize) -> bool {
        if self.state.keys.len() + new <= MAX_TRACKED {
            return true;
        }
        let idle: Vec<String> = self
            .state
            .keys
            .iter()
            .filter(|(_, k)| k.accepted.is_none() && k.hold_down_until.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            if self.state.keys.len() + new <= MAX_TRACKED {
                break;
            }
            if let Some(k) = self.state.keys.remove(&key)
                && let Some(p) = k.promised
            {
                self.state.floor = self.state.floor.max(p.round);
            }
        }
        self.state.keys.len() + new <= MAX_TRACKED
    }

    fn refuse(&mut self, id: u64, ballot: Option<Ballot>, why: Refusal) -> Vec<Action> {
        let r = &mut self.refusals;
        match &why {
            Refusal::Outbid { .. } => r.outbid += 1,
            Refusal::Config { .. } => r.config += 1,
            Refusal::Held { .. } => r.held += 1,
            Refusal::HoldDown { .. } => r.hold_down += 1,
            Refusal::Full => r.full += 1,
            Refusal::Invalid(_) => r.invalid += 1,
        }
        vec![Action::Reply {
            id,
            reply: Reply::Refused { ballot, why },
        }]
    }

    /// The highest round promised on `key`, or the floor for a key not tracked.
    fn promised_round(&self, key: &str) -> u64 {
        match self.state.keys.get(key) {
            Some(k) => k.promised.as_ref().map_or(0, |p| p.round),
            None => self.state.floor,
        }
    }

    fn prepare(
        &mut self,
        id: u64,
        ballot: Ballot,
        keys: Vec<String>,
        now: Duration,
    ) -> Vec<Action> {
        // A round above every promise, or the very ballot promised (a resent prepare).
        let mut highest = 0;
        let mut ok = true;
        for key in &keys {
            let same = self
                .state
                .keys
                .get(key)
                .and_then(|k| k.promised.as_ref())
                .is_some_and(|p| *p == ballot);
            let round = self.promised_round(key);
            highest = highest.max(round);
            ok &= same || ballot.round > round;
        }
        if !ok {
            return self.refuse(id, Some(ballot), Refusal::Outbid { round: highest });
        }
        let new = keys
            .iter()
            .filter(|k| !self.state.keys.contains_key(*k))
            .count();
        if !self.room_for(new) {
            return self.refuse(id, Some(ballot), Refusal::Full);
        }
        let mut open = Vec::new();
        let mut hold_down = Vec::new();
        for key in &keys {
            let k = self.state.keys.entry(key.clone()).or_default();
            k.promised = Some(ballot.clone());
            if let Some(a) = &k.accepted {
                open.push(Open {
                    key: key.clone(),
                    holder: a.grant.holder.clone(),
                    lease_id: a.grant.lease_id,
                    round: a.ballot.round,
                    remaining: a.until.saturating_sub(now),
                });
            }
            let own = k
                .hold_down_lease
                .as_ref()
                .is_some_and(|(_, id)| *id == ballot.lease_id);
            if let Some(t) = k.hold_down_until.filter(|_| !own) {
                hold_down.push((key.clone(), t.saturating_sub(now)));
            }
        }
        vec![
            Action::Persist(self.state.clone()),
            Action::Reply {
                id,
                reply: Reply::Promise {
                    ballot,
                    open,
                    hold_down,
                },
            },
        ]
    }

    fn propose(&mut self, id: u64, ballot: Ballot, grant: Grant, now: Duration) -> Vec<Action> {
        for key in &grant.keys {
            let k = self.state.keys.get(key);
            let promised = k.and_then(|k| k.promised.as_ref());
            if promised != Some(&ballot) {
                let round = self.promised_round(key);
                return self.refuse(id, Some(ballot), Refusal::Outbid { round });
            }
            let k = k.expect("promised above, so tracked");
            if let Some(a) = &k.accepted
                && (a.grant.holder != grant.holder || a.grant.lease_id != grant.lease_id)
            {
                let why = Refusal::Held {
                    key: key.clone(),
                    holder: a.grant.holder.clone(),
                };
                return self.refuse(id, Some(ballot), why);
            }
            let own = k
                .hold_down_lease
                .as_ref()
                .is_some_and(|(_, id)| *id == grant.lease_id);
            if let Some(t) = k.hold_down_until.filter(|_| !own) {
                let why = Refusal::HoldDown {
                    key: key.clone(),
                    remaining: t.saturating_sub(now),
                };
                return self.refuse(id, Some(ballot), why);
            }
        }
        let until = now + grant.duration;
        for key in &grant.keys {
            let k = self.state.keys.get_mut(key).expect("checked above");
            k.accepted = Some(Accepted {
                ballot: ballot.clone(),
                grant: grant.clone(),
                until,
            });
        }
        vec![
            Action::Persist(self.state.clone()),
            Action::Reply {
                id,
                reply: Reply::Accepted { ballot },
            },
        ]
    }

    fn release(
        &mut self,
        id: u64,
        from: &str,
        lease_id: u64,
        keys: Vec<String>,
        moved: bool,
        now: Duration,
    ) -> Vec<Action> {
        let mut changed = false;
        for key in &keys {
            let Some(k) = self.state.keys.get_mut(key) else {
                continue;
            };
            if k.accepted
                .as_ref()
                .is_some_and(|a| a.grant.holder == from && a.grant.lease_id == lease_id)
            {
                k.accepted = None;
                if moved && is_service_key(key) {
                    k.hold_down_until = Some(now + self.hold_down);
                    k.hold_down_lease = None;
                }
                changed = true;
            }
        }
        let reply = Action::Reply {
            id,
            reply: Reply::Released { lease_id },
        };
        if changed {
            vec![Action::Persist(self.state.clone()), reply]
        } else {
            vec![reply]
        }
    }
}

impl Machine for Voter {
    type Event = Event;
    type Action = Action;
    type Now = Duration;

    fn on_event(&mut self, event: Event, now: Duration) -> Vec<Action> {
        self.expire(now);
        match event {
            Event::Config { version, hold_down } => {
                self.config = version;
                self.hold_down = hold_down;
                Vec::new()
            }
            Event::Request { from, id, request } => {
                let ballot = match &request {
                    Request::Prepare { ballot, .. } | Request::Propose { ballot, .. } => {
                        Some(ballot.clone())
                    }
                    Request::Release { .. } => None,
                };
                if let Err(e) = request.validate(&from) {
                    return self.refuse(id, ballot, Refusal::Invalid(e));
                }
                match request {
                    Request::Prepare {
                        config,
                        ballot,
                        keys,
                    } => {
                        if config != self.config {
                            let held = self.config;
                            return self.refuse(id, Some(ballot), Refusal::Config { held });
                        }
                        self.prepare(id, ballot, keys, now)
                    }
                    Request::Propose {
                        config,
                        ballot,
                        grant,
                    } => {
                        if config != self.config {
                            let held = self.config;
                            return self.refuse(id, Some(ballot), Refusal::Config { held });
                        }
                        self.propose(id, ballot, grant, now)
                    }
                    // A release only gives back; it is taken under any fleet document.
                    Request::Release {
                        lease_id,
                        keys,
                        moved,
                    } => self.release(id, &from, lease_id, keys, moved, now),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::wire::{Invalid, fleet_slot, service_key};

    const D: Duration = Duration::from_secs(10);
    const HOLD: Duration = Duration::from_secs(60);

    fn ballot(round: u64, who: &str) -> Ballot {
        Ballot {
            round,
            proposer: who.into(),
            nonce: 7,
            lease_id: lease_of(who),
        }
    }

    /// Each test proposer's lease id (a node's leases are its own).
    fn lease_of(who: &str) -> u64 {
        who.bytes().map(u64::from).sum()
    }

    fn keys() -> Vec<String> {
        vec![service_key("web"), fleet_slot(0)]
    }

    fn prepare(round: u64, who: &str) -> Event {
        Event::Request {
            from: who.into(),
            id: round,
            request: Request::Prepare {
                config: 1,
                ballot: ballot(round, who),
                keys: keys(),
            },
        }
    }

    fn propose(round: u64, who: &str) -> Event {
        Event::Request {
            from: who.into(),
            id: round,
            request: Request::Propose {
                config: 1,
                ballot: ballot(round, who),
                grant: Grant {
                    holder: who.into(),
                    lease_id: lease_of(who),
                    keys: keys(),
                    duration: D,
                    note: "move web".into(),
                },
            },
        }
    }

    fn release(who: &str, moved: bool) -> Event {
        Event::Request {
            from: who.into(),
            id: 0,
            request: Request::Release {
                lease_id: lease_of(who),
                keys: keys(),
                moved,
            },
        }
    }

    /// The reply among `actions`, and whether a persist came before it.
    fn reply(actions: &[Action]) -> (Reply, bool) {
        let persisted = matches!(actions.first(), Some(Action::Persist(_)));
        let r = actions
            .iter()
            .find_map(|a| match a {
                Action::Reply { reply, .. } => Some(reply.clone()),
                Action::Persist(_) => None,
            })
            .expect("every request is answered");
        (r, persisted)
    }

    fn refusal(actions: &[Action]) -> Refusal {
        match reply(actions).0 {
            Reply::Refused { why, .. } => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn promises_and_acceptances_are_persisted_before_they_are_answered() {
        let mut v = Voter::new(1, HOLD);
        let (r, persisted) = reply(&v.on_event(prepare(1, "a"), Duration::ZERO));
        assert!(
            matches!(r, Reply::Promise { ref open, .. } if open.is_empty()),
            "{r:?}"
        );
        assert!(persisted);
        let (r, persisted) = reply(&v.on_event(propose(1, "a"), Duration::ZERO));
        assert_eq!(
            r,
            Reply::Accepted {
                ballot: ballot(1, "a")
            }
        );
        assert!(persisted);
        // A resent prepare of the same ballot is answered again (and reports the lease).
        let (r, _) = reply(&v.on_event(prepare(1, "a"), Duration::from_secs(1)));
        assert!(
            matches!(r, Reply::Promise { ref open, .. } if open.len() == 2),
            "{r:?}"
        );
    }

    #[test]
    fn refusals_table() {
        let t0 = Duration::ZERO;
        // (what came before, the request, the refusal expected)
        let cases: Vec<(Vec<Event>, Event, Refusal)> = vec![
            // A lower or equal round from someone else, after a promise.
            (
                vec![prepare(5, "a")],
                prepare(4, "b"),
                Refusal::Outbid { round: 5 },
            ),
            (
                vec![prepare(5, "a")],
                prepare(5, "b"),
                Refusal::Outbid { round: 5 },
            ),
            // A proposal under a ballot not promised (outbid in between).
            (
                vec![prepare(5, "a"), prepare(6, "b")],
                propose(5, "a"),
                Refusal::Outbid { round: 6 },
            ),
            (vec![], propose(1, "a"), Refusal::Outbid { round: 0 }),
            // Someone else's lease is open on the keys.
            (
                vec![prepare(1, "a"), propose(1, "a"), prepare(2, "b")],
                propose(2, "b"),
                Refusal::Held {
                    key: service_key("web"),
                    holder: "a".into(),
                },
            ),
            // The service moved: its hold-down.
            (
                vec![
                    prepare(1, "a"),
                    propose(1, "a"),
                    release("a", true),
                    prepare(2, "b"),
                ],
                propose(2, "b"),
                Refusal::HoldDown {
                    key: service_key("web"),
                    remaining: HOLD,
                },
            ),
            // Another fleet document.
            (
                vec![],
                Event::Request {
                    from: "a".into(),
                    id: 1,
                    request: Request::Prepare {
                        config: 2,
                        ballot: ballot(1, "a"),
                        keys: keys(),
                    },
                },
                Refusal::Config { held: 1 },
            ),
            // A ballot in someone else's name.
            (
                vec![],
                Event::Request {
                    from: "mallory".into(),
                    id: 1,
                    request: Request::Prepare {
                        config: 1,
                        ballot: ballot(9, "a"),
                        keys: keys(),
                    },
                },
                Refusal::Invalid(Invalid::NotTheSender("a".into())),
            ),
            (
                vec![],
                Event::Request {
                    from: "a".into(),
                    id: 1,
                    request: Request::Prepare {
                        config: 1,
                        ballot: ballot(1, "a"),
                        keys: (0..40).map(fleet_slot).collect(),
                    },
                },
                Refusal::Invalid(Invalid::TooManyKeys(40)),
            ),
            (
                vec![],
                Event::Request {
                    from: "a".into(),
                    id: 1,
                    request: Request::Prepare {
                        config: 1,
                        ballot: ballot(1, "a"),
                        keys: vec!["k".into(), "k".into()],
                    },
                },
                Refusal::Invalid(Invalid::DuplicateKey),
            ),
            (
                vec![prepare(1, "a")],
                Event::Request {
                    from: "a".into(),
                    id: 1,
                    request: Request::Propose {
                        config: 1,
                        ballot: ballot(1, "a"),
                        grant: Grant {
                            holder: "a".into(),
                            lease_id: 1,
                            keys: keys(),
                            duration: Duration::from_secs(3600),
                            note: String::new(),
                        },
                    },
                },
                Refusal::Invalid(Invalid::BadDuration(Duration::from_secs(3600))),
            ),
        ];
        for (i, (before, request, want)) in cases.into_iter().enumerate() {
            let mut v = Voter::new(1, HOLD);
            for e in before {
                v.on_event(e, t0);
            }
            let got = v.on_event(request, t0);
            assert_eq!(refusal(&got), want, "case {i}");
            assert!(
                !got.iter().any(|a| matches!(a, Action::Persist(_))),
                "case {i}: a refusal changes nothing"
            );
        }
    }

    #[test]
    fn a_lease_ends_on_time_or_on_release_and_only_a_move_holds_the_service_down() {
        let mut v = Voter::new(1, HOLD);
        v.on_event(prepare(1, "a"), Duration::ZERO);
        v.on_event(propose(1, "a"), Duration::ZERO);
        assert_eq!(v.open(D - Duration::from_millis(1)).len(), 2);
        assert!(v.open(D).is_empty());
        // Expired without a release: it may have moved, so the service is held down.
        let r = refusal(&{
            v.on_event(prepare(2, "b"), D);
            v.on_event(propose(2, "b"), D)
        });
        assert_eq!(
            r,
            Refusal::HoldDown {
                key: service_key("web"),
                remaining: HOLD
            }
        );
        let (r, _) = reply(&{
            v.on_event(prepare(3, "b"), D + HOLD);
            v.on_event(propose(3, "b"), D + HOLD)
        });
        assert_eq!(
            r,
            Reply::Accepted {
                ballot: ballot(3, "b")
            }
        );

        // Released without a move: no hold-down; a release by someone else is ignored.
        let mut v = Voter::new(1, HOLD);
        v.on_event(prepare(1, "a"), Duration::ZERO);
        v.on_event(propose(1, "a"), Duration::ZERO);
        v.on_event(release("b", true), Duration::ZERO);
        assert_eq!(v.open(Duration::ZERO).len(), 2, "not b's to release");
        v.on_event(release("a", false), Duration::ZERO);
        assert!(v.open(Duration::ZERO).is_empty());
        v.on_event(prepare(2, "b"), Duration::ZERO);
        let (r, _) = reply(&v.on_event(propose(2, "b"), Duration::ZERO));
        assert_eq!(
            r,
            Reply::Accepted {
                ballot: ballot(2, "b")
            }
        );
    }

    /// A lease that ended unreleased starts a hold-down that the same lease id escapes, whoever
    /// asks under it (the holder after a restart, or its successor); once released as moved,
    /// nobody escapes it.
    #[test]
    fn a_successor_takes_over_the_ended_lease_through_its_hold_down() {
        let mut v = Voter::new(1, HOLD);
        v.on_event(prepare(1, "a"), Duration::ZERO);
        v.on_event(propose(1, "a"), Duration::ZERO);
        let successor = |round: u64, lease_id: u64| {
            let b = Ballot {
                lease_id,
                ..ballot(round, "b")
            };
            (
                Event::Request {
                    from: "b".into(),
                    id: round,
                    request: Request::Prepare {
                        config: 1,
                        ballot: b.clone(),
                        keys: keys(),
                    },
                },
                Event::Request {
                    from: "b".into(),
                    id: round,
                    request: Request::Propose {
                        config: 1,
                        ballot: b,
                        grant: Grant {
                            holder: "b".into(),
                            lease_id,
                            keys: keys(),
                            duration: D,
                            note: "take over".into(),
                        },
                    },
                },
            )
        };
        // While a's lease is open, its successor is refused as busy.
        let (p, q) = successor(2, lease_of("a"));
        v.on_event(p, D / 2);
        assert!(matches!(
            refusal(&v.on_event(q, D / 2)),
            Refusal::Held { .. }
        ));
        // Ended unreleased: b under another id is held down; under a's id it is accepted.
        let (p, q) = successor(3, 99);
        v.on_event(p, D);
        assert!(matches!(
            refusal(&v.on_event(q, D)),
            Refusal::HoldDown { .. }
        ));
        let (p, q) = successor(4, lease_of("a"));
        v.on_event(p, D);
        let (r, _) = reply(&v.on_event(q, D));
        assert!(matches!(r, Reply::Accepted { .. }), "{r:?}");
        // b finishes the move and releases it as moved: nobody escapes the hold-down now.
        v.on_event(
            Event::Request {
                from: "b".into(),
                id: 0,
                request: Request::Release {
                    lease_id: lease_of("a"),
                    keys: keys(),
                    moved: true,
                },
            },
            D + D / 2,
        );
        for (round, id) in [(5, lease_of("a")), (6, lease_of("b"))] {
            let (p, q) = successor(round, id);
            v.on_event(p, D + D / 2);
            assert!(matches!(
                refusal(&v.on_event(q, D + D / 2)),
                Refusal::HoldDown { .. }
            ));
        }
    }

    #[test]
    fn a_restored_voter_keeps_its_promises_and_holds_every_lease_for_a_full_duration() {
        let mut v = Voter::new(1, HOLD);
        v.on_event(prepare(4, "a"), Duration::ZERO);
        let persisted = v
            .on_event(propose(4, "a"), Duration::ZERO)
            .into_iter()
            .find_map(|a| match a {
                Action::Persist(s) => Some(s),
                Action::Reply { .. } => None,
            })
            .expect("persisted");
        // Through its stored form (CBOR, as the agent keeps it).
        let mut bytes = Vec::new();
        ciborium::into_writer(&persisted, &mut bytes).expect("encodes");
        let stored: VoterState = ciborium::from_reader(bytes.as_slice()).expect("decodes");
        // Restarted late (its clock starts again): the lease counts from the restart.
        let later = Duration::from_secs(1000);
        let mut v = Voter::restore(stored, 1, HOLD, later);
        assert_eq!(v.open(later + D - Duration::from_millis(1)).len(), 2);
        assert_eq!(
            refusal(&v.on_event(prepare(3, "b"), later)),
            Refusal::Outbid { round: 4 }
        );
    }

    #[test]
    fn a_full_voter_forgets_idle_keys_and_refuses_their_old_rounds() {
        let mut v = Voter::new(1, HOLD);
        for i in 0..(MAX_TRACKED as u64) {
            let e = Event::Request {
                from: "a".into(),
                id: i,
                request: Request::Prepare {
                    config: 1,
                    ballot: ballot(i + 1, "a"),
                    keys: vec![format!("service/s{i}")],
                },
            };
            v.on_event(e, Duration::ZERO);
        }
        assert_eq!(v.state().keys.len(), MAX_TRACKED);
        // A new key makes room; a round below the forgotten promises is refused on any key not
        // tracked.
        let (r, _) = reply(&v.on_event(prepare(MAX_TRACKED as u64 + 1, "b"), Duration::ZERO));
        assert!(matches!(r, Reply::Promise { .. }), "{r:?}");
        assert!(v.state().keys.len() <= MAX_TRACKED);
        let floor = v.state().floor;
        assert!(floor > 0);
        let e = Event::Request {
            from: "c".into(),
            id: 0,
            request: Request::Prepare {
                config: 1,
                ballot: ballot(floor, "c"),
                keys: vec!["service/s0".into()],
            },
        };
        assert_eq!(
            refusal(&v.on_event(e, Duration::ZERO)),
            Refusal::Outbid { round: floor }
        );
    }
}
