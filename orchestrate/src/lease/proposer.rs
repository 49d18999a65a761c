//! One node's lease on one service, as a state machine: it asks the voters (prepare, then propose),
//! holds the lease until its own timer ends, renews it at half-time while the work goes on, and
//! gives it back. Its timer starts when it sends the prepare, before any voter starts its own, and
//! ends [`DRIFT_MARGIN`] early, so the holder always stops believing first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::wire::{
    Ballot, Grant, Open, Refusal, Reply, Request, fleet_slot, service_key, zone_slot,
};
use crate::Machine;

/// The share of a lease's duration the holder gives up to clock drift between nodes: its lease
/// ends `duration / DRIFT_MARGIN` before the voters' (2 %).
pub const DRIFT_MARGIN: u32 = 50;

/// Who asks, whom, under which fleet document and budget.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node (its peer id).
    pub me: String,
    /// Drawn at each start of the node, so its ballots are never reused after a restart.
    pub nonce: u64,
    /// The lease voters, from the signed fleet document.
    pub voters: Vec<String>,
    /// That document's version.
    pub config: u64,
    /// Moves at once in the fleet, and per zone (the disruption budget).
    pub fleet_slots: u32,
    pub zone_slots: u32,
    /// How long to wait for a majority's answers before asking again.
    pub reply_timeout: Duration,
    /// Rounds tried before giving up.
    pub attempts: u32,
}

/// The lease wanted.
#[derive(Clone, Debug)]
pub struct Want {
    pub service: String,
    /// The zone of the instance to move (its zone budget applies), if the fleet has zones.
    pub zone: Option<String>,
    pub duration: Duration,
    /// Unique per lease this node asks for.
    pub lease_id: u64,
    pub note: String,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// Ask for the lease.
    Start,
    Reply {
        from: String,
        reply: Reply,
    },
    /// A timer the machine set.
    Timer(u64),
    /// Give it back (or stop asking); `moved` starts the service's hold-down.
    Release {
        moved: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Send {
        to: String,
        request: Request,
    },
    /// Deliver `Event::Timer(id)` at `at`.
    Timer {
        at: Duration,
        id: u64,
    },
    /// The lease is held until `until` (this node's clock); every action carries `epoch`.
    Acquired {
        epoch: u64,
        until: Duration,
        keys: Vec<String>,
    },
    /// Renewed: held until `until` under the higher `epoch`.
    Renewed {
        epoch: u64,
        until: Duration,
    },
    /// Not obtained; the machine is done.
    Refused(Failure),
    /// It ended without a renewal: stop acting now. The machine is done.
    Lost,
    /// Given back. The machine is done.
    Released,
}

/// Why a lease was not obtained.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{service} is being moved under a lease held by {holder}")]
    Busy { service: String, holder: String },
    #[error("{service} moved recently: its hold-down has {remaining:?} left")]
    HoldDown {
        service: String,
        remaining: Duration,
    },
    #[error("the disruption budget of the {scope} is spent: {slots} move(s) at once")]
    Budget { scope: String, slots: u32 },
    #[error(
        "no majority of the {voters} lease voters answered ({heard} did): this node may be in a minority partition, or voters are down"
    )]
    NoMajority { heard: usize, voters: usize },
    #[error(
        "the voters hold fleet document version {held}, this node another: wait for the catalog to converge"
    )]
    Config { held: u64 },
    #[error("the voters refused the request as invalid: {0}")]
    Invalid(String),
    #[error(
        "no fleet document names the lease voters on this node: apply one with `augur fleet apply FILE`"
    )]
    Unconfigured,
}

impl Failure {
    /// A conflict with the fleet's state (busy, hold-down, budget): HTTP 409. The others mean the
    /// voters could not be reached or agree (503).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Failure::Busy { .. } | Failure::HoldDown { .. } | Failure::Budget { .. }
        )
    }
}

#[derive(Clone, Debug)]
struct Held {
    epoch: u64,
    until: Duration,
    keys: Vec<String>,
}

/// What one voter's promise reported: leases open on the keys, and service keys in hold-down.
type Promised = (Vec<Open>, Vec<(String, Duration)>);

/// A round of asking in progress.
#[derive(Clone, Debug)]
struct Ask {
    renewing: bool,
    ballot: Ballot,
    /// The lease, if won, counts from here.
    started: Duration,
    /// In phase 2, the keys proposed and the voters that promised.
    proposed: Option<(Vec<String>, BTreeSet<String>)>,
    promises: BTreeMap<String, Promised>,
    accepts: BTreeSet<String>,
    refusals: BTreeMap<String, Refusal>,
    timer: u64,
}

#[derive(Debug)]
pub struct Proposer {
    settings: Settings,
    want: Want,
    voters: BTreeSet<String>,
    max_round: u64,
    attempt: u32,
    next_timer: u64,
    ask: Option<Ask>,
    held: Option<Held>,
    renew_timer: u64,
    expiry_timer: u64,
    backoff_timer: u64,
    done: bool,
}

/// A well-mixed hash (splitmix64), for retry jitter that differs between proposers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Proposer {
    /// `min_round`: a round the node knows is taken (the highest epoch it has seen), to start
    /// above it.
    pub fn new(settings: Settings, want: Want, min_round: u64) -> Self {
        let voters = settings.voters.iter().cloned().collect();
        Self {
            settings,
            want,
            voters,
            max_round: min_round,
            attempt: 0,
            next_timer: 0,
            ask: None,
            held: None,
            renew_timer: u64::MAX,
            expiry_timer: u64::MAX,
            backoff_timer: u64::MAX,
            done: false,
        }
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether the machine has finished (refused, lost or released).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The epoch and end of the lease held, if any.
    pub fn held(&self) -> Option<(u64, Duration)> {
        self.held.as_ref().map(|h| (h.epoch, h.until))
    }

    fn timer(&mut self, at: Duration, out: &mut Vec<Action>) -> u64 {
        self.next_timer += 1;
        out.push(Action::Timer {
            at,
            id: self.next_timer,
        });
        self.next_timer
    }

    /// Every key a new lease could take: the service's and each budget slot.
    fn candidate_keys(&self) -> Vec<String> {
        let mut keys = vec![service_key(&self.want.service)];
        keys.extend((0..self.settings.fleet_slots).map(fleet_slot));
        if let Some(z) = &self.want.zone {
            keys.extend((0..self.settings.zone_slots).map(|i| zone_slot(z, i)));
        }
        keys
    }

    fn start_ask(&mut self, renewing: bool, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if self.voters.is_empty() {
            return self.fail(
                Failure::NoMajority {
                    heard: 0,
                    voters: 0,
                },
                out,
            );
        }
        self.attempt += 1;
        self.max_round += 1;
        let ballot = Ballot {
            round: self.max_round,
            proposer: self.settings.me.clone(),
            nonce: self.settings.nonce,
            lease_id: self.want.lease_id,
        };
        let keys = match (&self.held, renewing) {
            (Some(h), true) => h.keys.clone(),
            _ => self.candidate_keys(),
        };
        for to in &self.voters {
            out.push(Action::Send {
                to: to.clone(),
                request: Request::Prepare {
                    config: self.settings.config,
                    ballot: ballot.clone(),
                    keys: keys.clone(),
                },
            });
        }
        let timer = self.timer(now + self.settings.reply_timeout, &mut out);
        self.ask = Some(Ask {
            renewing,
            ballot,
            started: now,
            proposed: None,
            promises: BTreeMap::new(),
            accepts: BTreeSet::new(),
            refusals: BTreeMap::new(),
            timer,
        });
        out
    }

    /// Ends the machine with a refusal (or, while holding, just stops the renewal).
    fn fail(&mut self, why: Failure, mut out: Vec<Action>) -> Vec<Action> {
        self.ask = None;
        if self.held.is_some() {
            // A renewal that cannot succeed: the lease runs out at its time (the expiry timer).
            return out;
        }
        self.done = true;
        out.push(Action::Refused(why));
        out
    }

    /// A round that cannot succeed: ask again (after a pause that differs between proposers) or
    /// give up.
    fn retry_or_fail(&mut self, why: Failure, now: Duration) -> Vec<Action> {
        let renewing = self.ask.as_ref().is_some_and(|a| a.renewing);
        self.ask = None;
        let mut out = Vec::new();
        let more = if renewing {
            self.held.as_ref().is_some_and(|h| h.until > now)
        } else {
            self.attempt < self.settings.attempts
        };
        if !more {
            return self.fail(why, out);
        }
        let base = self.settings.reply_timeout.as_micros() as u64 / 2;
        let jitter = mix(self.settings.nonce ^ u64::from(self.attempt)) % base.max(1);
        let at = now + Duration::from_micros(base / 2 + jitter);
        self.backoff_timer = self.timer(at, &mut out);
        out
    }

    fn on_promise(
        &mut self,
        from: String,
        ballot: Ballot,
        open: Vec<Open>,
        hold_down: Vec<(String, Duration)>,
        now: Duration,
    ) -> Vec<Action> {
        let majority = self.majority();
        let Some(ask) = self.ask.as_mut() else {
            return Vec::new();
        };
        if ask.ballot != ballot || ask.proposed.is_some() || ask.refusals.contains_key(&from) {
            return Vec::new();
        }
        ask.promises.insert(from, (open, hold_down));
        if ask.promises.len() < majority {
            return Vec::new();
        }
        let ask = ask.clone();
        let me = (&self.settings.me, self.want.lease_id);
        let taken = |key: &str| {
            ask.promises.values().flat_map(|(o, _)| o).find(|o| {
                o.key == key
                    && (&o.holder, o.lease_id) != (me.0, me.1)
                    && o.remaining > Duration::ZERO
            })
        };
        let service = service_key(&self.want.service);
        if let Some(o) = taken(&service) {
            let why = Failure::Busy {
                service: self.want.service.clone(),
                holder: o.holder.clone(),
            };
            return self.fail(why, Vec::new());
        }
        let keys = if ask.renewing {
            self.held
                .as_ref()
                .map(|h| h.keys.clone())
                .unwrap_or_default()
        } else {
            // Held down when a majority of the promises say so: one voter that missed a
            // release (its copy of the lease then ended on its timer, which starts a hold-down)
            // does not block the fleet; one whose copy is still open reports it held.
            let held_down: Vec<Duration> = ask
                .promises
                .values()
                .flat_map(|(_, h)| h)
                .filter(|(k, _)| *k == service)
                .map(|(_, r)| *r)
                .collect();
            if held_down.len() >= majority {
                let remaining = held_down.iter().copied().max().unwrap_or_default();
                let why = Failure::HoldDown {
                    service: self.want.service.clone(),
                    remaining,
                };
                return self.fail(why, Vec::new());
            }
            let mut keys = vec![service];
            let slots = self.settings.fleet_slots;
            match (0..slots).map(fleet_slot).find(|k| taken(k).is_none()) {
                Some(k) => keys.push(k),
                None if slots == 0 => {}
                None => {
                    let why = Failure::Budget {
                        scope: "fleet".into(),
                        slots,
                    };
                    return self.fail(why, Vec::new());
                }
            }
            if let Some(z) = &self.want.zone {
                let slots = self.settings.zone_slots;
                match (0..slots)
                    .map(|i| zone_slot(z, i))
                    .find(|k| taken(k).is_none())
                {
                    Some(k) => keys.push(k),
                    None if slots == 0 => {}
                    None => {
                        let why = Failure::Budget {
                            scope: format!("zone {z}"),
                            slots,
                        };
                        return self.fail(why, Vec::new());
                    }
                }
            }
            keys
        };
        let grant = Grant {
            holder: self.settings.me.clone(),
            lease_id: self.want.lease_id,
            keys: keys.clone(),
            duration: self.want.duration,
            note: self.want.note.clone(),
        };
        let promisers: BTreeSet<String> = ask.promises.keys().cloned().collect();
        let mut out: Vec<Action> = promisers
            .iter()
            .map(|to| Action::Send {
                to: to.clone(),
                request: Request::Propose {
                    config: self.settings.config,
                    ballot: ask.ballot.clone(),
                    grant: grant.clone(),
                },
            })
            .collect();
        let timer = self.timer(now + self.settings.reply_timeout, &mut out);
        let a = self.ask.as_mut().expect("asking");
        a.proposed = Some((keys, promisers));
        a.timer = timer;
        out
    }

    fn on_accepted(&mut self, from: String, ballot: Ballot, now: Duration) -> Vec<Action> {
        let majority = self.majority();
        let Some(ask) = self.ask.as_mut() else {
            return Vec::new();
        };
        let Some((keys, promisers)) = &ask.proposed else {
            return Vec::new();
        };
        if ask.ballot != ballot || !promisers.contains(&from) {
            return Vec::new();
        }
        ask.accepts.insert(from);
        if ask.accepts.len() < majority {
            return Vec::new();
        }
        let keys = keys.clone();
        let ask = self.ask.take().expect("asking");
        let duration = self.want.duration;
        let until = ask.started + duration - duration / DRIFT_MARGIN;
        let mut out = Vec::new();
        if until <= now {
            // Won too late to be of use: ask again.
            self.ask = Some(ask);
            return self.retry_or_fail(
                Failure::NoMajority {
                    heard: majority,
                    voters: self.voters.len(),
                },
                now,
            );
        }
        let epoch = ballot.round;
        out.push(if ask.renewing {
            Action::Renewed { epoch, until }
        } else {
            Action::Acquired {
                epoch,
                until,
                keys: keys.clone(),
            }
        });
        self.held = Some(Held { epoch, until, keys });
        self.attempt = 0;
        self.renew_timer = self.timer(ask.started + duration / 2, &mut out);
        self.expiry_timer = self.timer(until, &mut out);
        out
    }

    fn on_refused(
        &mut self,
        from: String,
        ballot: Ballot,
        why: Refusal,
        now: Duration,
    ) -> Vec<Action> {
        let majority = self.majority();
        let voters = self.voters.len();
        let Some(ask) = self.ask.as_mut() else {
            return Vec::new();
        };
        if ask.ballot != ballot {
            return Vec::new();
        }
        if let Refusal::Outbid { round } = &why {
            self.max_round = self.max_round.max(*round);
        }
        // Who can still say yes in this phase.
        let pool = match &ask.proposed {
            Some((_, promisers)) => {
                if !promisers.contains(&from) || ask.accepts.contains(&from) {
                    return Vec::new();
                }
                promisers.len()
            }
            None => {
                if ask.promises.contains_key(&from) {
                    return Vec::new();
                }
                voters
            }
        };
        ask.refusals.insert(from, why);
        if pool - ask.refusals.len() >= majority {
            return Vec::new();
        }
        let refusals: Vec<Refusal> = ask.refusals.values().cloned().collect();
        let service = self.want.service.clone();
        for r in &refusals {
            let fatal = match r {
                Refusal::Held { holder, .. } => Some(Failure::Busy {
                    service: service.clone(),
                    holder: holder.clone(),
                }),
                Refusal::HoldDown { remaining, .. } => Some(Failure::HoldDown {
                    service: service.clone(),
                    remaining: *remaining,
                }),
                Refusal::Invalid(e) => Some(Failure::Invalid(e.to_string())),
                _ => None,
            };
            if let Some(f) = fatal {
                return self.fail(f, Vec::new());
            }
        }
        let config = refusals.iter().find_map(|r| match r {
            Refusal::Config { held } => Some(*held),
            _ => None,
        });
        let outbid = refusals.iter().any(|r| matches!(r, Refusal::Outbid { .. }));
        match config {
            Some(held) if !outbid => self.fail(Failure::Config { held }, Vec::new()),
            _ => {
                let heard = voters - refusals.len();
                self.retry_or_fail(Failure::NoMajority { heard, voters }, now)
            }
        }
    }

    fn release(&mut self, moved: bool) -> Vec<Action> {
        let mut keys: Vec<String> = self.held.take().map(|h| h.keys).unwrap_or_default();
        if let Some((proposed, _)) = self.ask.take().and_then(|a| a.proposed) {
            for k in proposed {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        self.done = true;
        let mut out = Vec::new();
        if !keys.is_empty() {
            for to in &self.voters {
                out.push(Action::Send {
                    to: to.clone(),
                    request: Request::Release {
                        lease_id: self.want.lease_id,
                        keys: keys.clone(),
                        moved,
                    },
                });
            }
        }
        out.push(Action::Released);
        out
    }
}

impl Machine for Proposer {
    type Event = Event;
    type Action = Action;
    type Now = Duration;

    fn on_event(&mut self, event: Event, now: Duration) -> Vec<Action> {
        if self.done {
            return Vec::new();
        }
        match event {
            Event::Start => {
                if self.ask.is_some() || self.held.is_some() {
                    return Vec::new();
                }
                self.start_ask(false, now)
            }
            Event::Reply { from, reply } => match reply {
                Reply::Promise {
                    ballot,
                    open,
                    hold_down,
                } => self.on_promise(from, ballot, open, hold_down, now),
                Reply::Accepted { ballot } => self.on_accepted(from, ballot, now),
                Reply::Refused {
                    ballot: Some(ballot),
                    why,
                } => self.on_refused(from, ballot, why, now),
                Reply::Refused { ballot: None, .. } | Reply::Released { .. } => Vec::new(),
            },
            Event::Timer(id) => {
                if id == self.expiry_timer
                    && let Some(h) = &self.held
                    && h.until <= now
                {
                    self.held = None;
                    self.ask = None;
                    self.done = true;
                    return vec![Action::Lost];
                }
                if id == self.renew_timer && self.held.is_some() && self.ask.is_none() {
                    return self.start_ask(true, now);
                }
                if id == self.backoff_timer && self.ask.is_none() {
                    let renewing = self.held.is_some();
                    return self.start_ask(renewing, now);
                }
                if self.ask.as_ref().is_some_and(|a| a.timer == id) {
                    let ask = self.ask.as_ref().expect("checked");
                    let heard = ask.promises.len().max(ask.accepts.len());
                    let voters = self.voters.len();
                    return self.retry_or_fail(Failure::NoMajority { heard, voters }, now);
                }
                Vec::new()
            }
            Event::Release { moved } => self.release(moved),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::wire::Open;

    const D: Duration = Duration::from_secs(10);
    const T0: Duration = Duration::ZERO;

    fn proposer(zone: Option<&str>) -> Proposer {
        Proposer::new(
            Settings {
                me: "me".into(),
                nonce: 3,
                voters: vec!["v0".into(), "v1".into(), "v2".into()],
                config: 1,
                fleet_slots: 2,
                zone_slots: 1,
                reply_timeout: Duration::from_millis(500),
                attempts: 2,
            },
            Want {
                service: "web".into(),
                zone: zone.map(Into::into),
                duration: D,
                lease_id: 1,
                note: "move web".into(),
            },
            0,
        )
    }

    fn sent(actions: &[Action]) -> Vec<(String, Request)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { to, request } => Some((to.clone(), request.clone())),
                _ => None,
            })
            .collect()
    }

    fn ballot_of(actions: &[Action]) -> Ballot {
        match &sent(actions)[0].1 {
            Request::Prepare { ballot, .. } | Request::Propose { ballot, .. } => ballot.clone(),
            Request::Release { .. } => panic!("no ballot in a release"),
        }
    }

    fn promise(
        p: &mut Proposer,
        from: &str,
        ballot: &Ballot,
        open: Vec<Open>,
        now: Duration,
    ) -> Vec<Action> {
        p.on_event(
            Event::Reply {
                from: from.into(),
                reply: Reply::Promise {
                    ballot: ballot.clone(),
                    open,
                    hold_down: vec![],
                },
            },
            now,
        )
    }

    fn accept(p: &mut Proposer, from: &str, ballot: &Ballot, now: Duration) -> Vec<Action> {
        p.on_event(
            Event::Reply {
                from: from.into(),
                reply: Reply::Accepted {
                    ballot: ballot.clone(),
                },
            },
            now,
        )
    }

    fn open(key: &str, holder: &str) -> Open {
        Open {
            key: key.into(),
            holder: holder.into(),
            lease_id: 9,
            round: 1,
            remaining: Duration::from_secs(5),
        }
    }

    /// Runs one round to a majority of promises (each reporting `open`), then of acceptances.
    fn win(p: &mut Proposer, open: Vec<Open>, now: Duration) -> Vec<Action> {
        let b = ballot_of(&p.on_event(Event::Start, now));
        promise(p, "v0", &b, open.clone(), now);
        let proposed = promise(p, "v1", &b, open, now);
        let mut out = proposed.clone();
        if !sent(&proposed).is_empty() {
            accept(p, "v0", &b, now);
            out.extend(accept(p, "v1", &b, now));
        }
        out
    }

    #[test]
    fn a_majority_grants_the_service_key_and_the_first_free_slots() {
        let mut p = proposer(Some("a"));
        let start = p.on_event(Event::Start, T0);
        let prepares = sent(&start);
        assert_eq!(prepares.len(), 3, "to every voter");
        let Request::Prepare { keys, .. } = &prepares[0].1 else {
            panic!("a prepare");
        };
        assert_eq!(
            keys,
            &[
                "service/web",
                "budget/fleet/0",
                "budget/fleet/1",
                "budget/zone/a/0"
            ]
        );
        let b = ballot_of(&start);
        // Slot 0 of the fleet is someone else's; one promise is a majority of one voter only.
        let busy = vec![open("budget/fleet/0", "other")];
        assert!(promise(&mut p, "v0", &b, busy.clone(), T0).is_empty());
        assert!(
            promise(&mut p, "v0", &b, busy.clone(), T0).is_empty(),
            "a duplicate counts once"
        );
        let proposals = sent(&promise(&mut p, "v2", &b, vec![], T0));
        assert_eq!(proposals.len(), 2, "to the voters that promised");
        let Request::Propose { grant, .. } = &proposals[0].1 else {
            panic!("a proposal");
        };
        assert_eq!(
            grant.keys,
            ["service/web", "budget/fleet/1", "budget/zone/a/0"]
        );
        assert!(
            accept(&mut p, "v1", &b, T0).is_empty(),
            "v1 did not promise"
        );
        accept(&mut p, "v0", &b, T0);
        let won = accept(&mut p, "v2", &b, T0);
        assert_eq!(
            won[0],
            Action::Acquired {
                epoch: b.round,
                until: D - D / DRIFT_MARGIN,
                keys: grant.keys.clone()
            }
        );
        assert_eq!(p.held(), Some((b.round, D - D / DRIFT_MARGIN)));
    }

    #[test]
    fn refusals_table() {
        let cases: Vec<(Vec<Open>, Option<&str>, Failure)> = vec![
            (
                vec![open("service/web", "other")],
                None,
                Failure::Busy {
                    service: "web".into(),
                    holder: "other".into(),
                },
            ),
            (
                vec![open("budget/fleet/0", "x"), open("budget/fleet/1", "y")],
                None,
                Failure::Budget {
                    scope: "fleet".into(),
                    slots: 2,
                },
            ),
            (
                vec![open("budget/zone/a/0", "x")],
                Some("a"),
                Failure::Budget {
                    scope: "zone a".into(),
                    slots: 1,
                },
            ),
        ];
        for (i, (open, zone, want)) in cases.into_iter().enumerate() {
            let mut p = proposer(zone);
            let out = win(&mut p, open, T0);
            assert_eq!(out.last(), Some(&Action::Refused(want.clone())), "case {i}");
            assert!(p.is_done());
            assert!(want.is_conflict());
        }
    }

    #[test]
    fn a_minority_is_refused_after_its_attempts() {
        let mut p = proposer(None);
        let b = ballot_of(&p.on_event(Event::Start, T0));
        promise(&mut p, "v0", &b, vec![], T0);
        // No majority within the reply timeout: a second round after a pause, then give up.
        let mut now = T0;
        let mut refused = None;
        for _ in 0..10 {
            now += Duration::from_millis(100);
            for id in 0..20 {
                for a in p.on_event(Event::Timer(id), now) {
                    if let Action::Refused(f) = a {
                        refused = Some(f);
                    }
                }
            }
        }
        let f = refused.expect("refused");
        assert!(matches!(f, Failure::NoMajority { voters: 3, .. }), "{f:?}");
        assert!(!f.is_conflict());
    }

    #[test]
    fn a_lease_not_renewed_is_lost_at_its_end_and_a_released_one_is_given_back() {
        let mut p = proposer(None);
        let won = win(&mut p, vec![], T0);
        let timers: Vec<(Duration, u64)> = won
            .iter()
            .filter_map(|a| match a {
                Action::Timer { at, id } => Some((*at, *id)),
                _ => None,
            })
            .collect();
        // Renewal at half-time, expiry at the (early) end.
        let (renew_at, renew) = timers[timers.len() - 2];
        let (end_at, end) = timers[timers.len() - 1];
        assert_eq!(renew_at, D / 2);
        assert_eq!(end_at, D - D / DRIFT_MARGIN);
        let renewal = p.on_event(Event::Timer(renew), renew_at);
        let b2 = ballot_of(&renewal);
        assert!(b2.round > 1, "a renewal is a higher ballot");
        // The voters stay silent: the lease is lost at its end, not before.
        assert!(
            !p.on_event(Event::Timer(end), end_at - Duration::from_millis(1))
                .contains(&Action::Lost)
        );
        assert_eq!(p.on_event(Event::Timer(end), end_at), vec![Action::Lost]);
        assert!(p.is_done());

        let mut p = proposer(None);
        win(&mut p, vec![], T0);
        let out = p.on_event(Event::Release { moved: true }, T0);
        assert_eq!(sent(&out).len(), 3);
        assert_eq!(out.last(), Some(&Action::Released));
        assert!(p.held().is_none());
    }

    #[test]
    fn a_renewal_keeps_the_slots_and_raises_the_epoch() {
        let mut p = proposer(Some("a"));
        let won = win(&mut p, vec![], T0);
        let Some((epoch, keys)) = won.iter().find_map(|a| match a {
            Action::Acquired { epoch, keys, .. } => Some((*epoch, keys.clone())),
            _ => None,
        }) else {
            panic!("acquired: {won:?}");
        };
        let renew = won
            .iter()
            .filter_map(|a| match a {
                Action::Timer { id, .. } => Some(*id),
                _ => None,
            })
            .nth(
                won.iter()
                    .filter(|a| matches!(a, Action::Timer { .. }))
                    .count()
                    - 2,
            )
            .expect("a renewal timer");
        let now = D / 2;
        let out = p.on_event(Event::Timer(renew), now);
        let b = ballot_of(&out);
        let Request::Prepare { keys: asked, .. } = &sent(&out)[0].1 else {
            panic!("a prepare");
        };
        assert_eq!(asked, &keys);
        let mine = Open {
            key: "service/web".into(),
            holder: "me".into(),
            lease_id: 1,
            round: epoch,
            remaining: D / 2,
        };
        promise(&mut p, "v0", &b, vec![mine.clone()], now);
        promise(&mut p, "v2", &b, vec![mine], now);
        accept(&mut p, "v0", &b, now);
        let out = accept(&mut p, "v2", &b, now);
        assert_eq!(
            out[0],
            Action::Renewed {
                epoch: b.round,
                until: now + D - D / DRIFT_MARGIN
            }
        );
        assert!(b.round > epoch);
    }
}
