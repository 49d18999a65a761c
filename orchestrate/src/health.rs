//! An instance's health from its checks, without I/O: `successes` consecutive passes make it
//! healthy, `failures` consecutive failures unhealthy; a new instance is unknown (and takes no
//! traffic) until it has passed. The prober (the agent) feeds each check's result; the proxy
//! follows the transitions.

use std::time::Duration;

use crate::Machine;
use crate::spec::HealthCheck;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not yet passed `successes` checks in a row since it started.
    Unknown,
    Healthy,
    Unhealthy,
}

/// One check's result: its latency when it passed, or why it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Passed(Duration),
    Failed(String),
}

/// What follows a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The instance's health changed (the proxy adds or removes it; an event is published).
    Became {
        health: Health,
        reason: Option<String>,
    },
}

/// The health of one instance.
#[derive(Clone, Debug)]
pub struct HealthTracker {
    successes: u32,
    failures: u32,
    passed_in_a_row: u32,
    failed_in_a_row: u32,
    health: Health,
}

impl HealthTracker {
    pub fn new(check: &HealthCheck) -> Self {
        Self {
            successes: check.successes.max(1),
            failures: check.failures.max(1),
            passed_in_a_row: 0,
            failed_in_a_row: 0,
            health: Health::Unknown,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Whether the instance takes traffic.
    pub fn serves(&self) -> bool {
        self.health == Health::Healthy
    }
}

impl Machine for HealthTracker {
    type Event = Check;
    type Action = Transition;
    /// Checks come in order; their times do not change the verdict.
    type Now = ();

    fn on_event(&mut self, check: Check, (): ()) -> Vec<Transition> {
        let (next, reason) = match check {
            Check::Passed(_) => {
                self.passed_in_a_row += 1;
                self.failed_in_a_row = 0;
                let next = if self.passed_in_a_row >= self.successes {
                    Health::Healthy
                } else {
                    self.health
                };
                (next, None)
            }
            Check::Failed(why) => {
                self.failed_in_a_row += 1;
                self.passed_in_a_row = 0;
                let next = if self.failed_in_a_row >= self.failures {
                    Health::Unhealthy
                } else {
                    self.health
                };
                (next, Some(why))
            }
        };
        if next == self.health {
            return Vec::new();
        }
        self.health = next;
        vec![Transition::Became {
            health: next,
            reason: if next == Health::Healthy {
                None
            } else {
                reason
            },
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drive;

    fn check(successes: u32, failures: u32) -> HealthCheck {
        HealthCheck {
            http: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            successes,
            failures,
        }
    }

    fn pass() -> (Check, ()) {
        (Check::Passed(Duration::from_millis(3)), ())
    }

    fn fail() -> (Check, ()) {
        (Check::Failed("connection refused".into()), ())
    }

    fn became(h: Health) -> Vec<Transition> {
        vec![Transition::Became {
            health: h,
            reason: (h != Health::Healthy).then(|| "connection refused".to_owned()),
        }]
    }

    #[test]
    fn consecutive_results_decide_and_a_flap_does_not() {
        let none = Vec::new;
        /// (name, (successes, failures), checks, transitions after each).
        type Case = (
            &'static str,
            (u32, u32),
            Vec<(Check, ())>,
            Vec<Vec<Transition>>,
        );
        let cases: Vec<Case> = vec![
            (
                "a new instance serves after `successes` passes in a row",
                (2, 3),
                vec![pass(), fail(), pass(), pass()],
                vec![none(), none(), none(), became(Health::Healthy)],
            ),
            (
                "`failures` failures in a row make it unhealthy; one pass between resets the count",
                (1, 3),
                vec![pass(), fail(), fail(), pass(), fail(), fail(), fail()],
                vec![
                    became(Health::Healthy),
                    none(),
                    none(),
                    none(),
                    none(),
                    none(),
                    became(Health::Unhealthy),
                ],
            ),
            (
                "an instance that never passes is unhealthy, and recovers after `successes` passes",
                (2, 2),
                vec![fail(), fail(), pass(), pass()],
                vec![
                    none(),
                    became(Health::Unhealthy),
                    none(),
                    became(Health::Healthy),
                ],
            ),
        ];
        for (name, (s, f), steps, want) in cases {
            let mut t = HealthTracker::new(&check(s, f));
            assert_eq!(drive(&mut t, steps), want, "{name}");
        }
    }
}
