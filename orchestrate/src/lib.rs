//! The acting half of augur without I/O: every protocol that decides who may act, and what to do
//! next, as a state machine. A machine sees the world only through the events it is given, with
//! the time they happen; it answers with actions, which a thin task around it carries out (sends,
//! timers, driver calls) and whose outcomes come back as events. So every decision is testable
//! with plain values, table-driven and with seeded random histories, without sockets or sleeps.
//!
//! The membership view (`augur_mesh::membership::view`) is the first machine written this way;
//! `spec` holds the service catalog's unit of desired state, the input of placement; the ones to
//! come live here, each in its own module:
//! - `lease`: majority leases with fencing tokens (who holds the right to act on a resource);
//! - `election`: which peer acts for a failing node (never two, never from a minority);
//! - `budget`: the disruption budget (how much may move at once, fleet-wide);
//! - `migration`: the steps of a live, warm-standby or blue/green move, each with its rollback.
//!
//! What does not belong here: sockets, files, clocks, processes, drivers. Those are the agent's
//! (`agent/src/...`) and the proxy's (`proxy/`).

use std::fmt::Debug;

pub mod autonomy;
pub mod catalog;
pub mod fleet;
pub mod health;
pub mod lease;
pub mod migration;
pub mod placement;
pub mod spec;

/// A protocol as a state machine: given an event and the time it happened, it changes its state
/// and answers with what should be done.
pub trait Machine {
    type Event: Debug;
    type Action: Debug;
    /// The time events carry (a monotonic instant, a wall time, or both).
    type Now: Copy + Debug;

    fn on_event(&mut self, event: Self::Event, now: Self::Now) -> Vec<Self::Action>;
}

/// Feeds `steps` to `machine` in order and returns each step's actions: the driver of
/// table-driven tests.
pub fn drive<M: Machine>(
    machine: &mut M,
    steps: impl IntoIterator<Item = (M::Event, M::Now)>,
) -> Vec<Vec<M::Action>> {
    steps
        .into_iter()
        .map(|(event, now)| machine.on_event(event, now))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turnstile: the smallest machine, to show the shape (and that `drive` keeps order).
    #[derive(Debug, Default)]
    struct Turnstile {
        locked: bool,
    }

    #[derive(Debug)]
    enum Input {
        Coin,
        Push,
    }

    #[derive(Debug, PartialEq)]
    enum Act {
        Unlock,
        Lock,
        Alarm { at: u64 },
    }

    impl Machine for Turnstile {
        type Event = Input;
        type Action = Act;
        type Now = u64;

        fn on_event(&mut self, event: Input, now: u64) -> Vec<Act> {
            match (event, self.locked) {
                (Input::Coin, true) => {
                    self.locked = false;
                    vec![Act::Unlock]
                }
                (Input::Push, false) => {
                    self.locked = true;
                    vec![Act::Lock]
                }
                (Input::Push, true) => vec![Act::Alarm { at: now }],
                (Input::Coin, false) => Vec::new(),
            }
        }
    }

    #[test]
    fn drive_feeds_events_in_order() {
        let mut t = Turnstile { locked: true };
        let acts = drive(
            &mut t,
            [
                (Input::Push, 1),
                (Input::Coin, 2),
                (Input::Coin, 3),
                (Input::Push, 4),
            ],
        );
        assert_eq!(
            acts,
            vec![
                vec![Act::Alarm { at: 1 }],
                vec![Act::Unlock],
                vec![],
                vec![Act::Lock]
            ]
        );
    }
}
