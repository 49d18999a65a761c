//! How each model version does in production: its alarm episodes on the resources of its type,
//! which of them a labelled failure followed within the horizon, and the resource-time it served;
//! and the rule that reverts a version whose false-alarm rate rose above the previous one's.
//! No I/O: the prediction stage feeds it every sample (time in seconds) and acts on its answer.

use std::collections::{BTreeMap, HashMap};

/// A version's record.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VersionScore {
    pub episodes: u64,
    /// Episodes no labelled failure followed within the horizon.
    pub false_alarms: u64,
    /// Resource-seconds predicted with it.
    pub resource_s: f64,
}

impl VersionScore {
    /// False alarms per resource-hour.
    pub fn rate(&self) -> f64 {
        self.false_alarms as f64 / (self.resource_s / 3600.0).max(1e-9)
    }
}

/// The least exposure on which a version is judged (resource-hours).
pub const MIN_HOURS: f64 = 1.0;
/// The fewest false alarms that can condemn a version.
pub const MIN_FALSE: u64 = 3;
/// How much higher than the previous version's its rate must be.
pub const WORSE_BY: f64 = 1.5;
/// Gaps between samples longer than this do not count as exposure.
const MAX_GAP_S: f64 = 60.0;

#[derive(Clone, Debug)]
struct Resource {
    last_ts: f64,
    on: bool,
    /// Open episodes not yet judged: (version, start).
    open: Vec<(u64, f64)>,
}

/// Scores per (type, version) and each resource's state.
#[derive(Clone, Debug, Default)]
pub struct LiveAlarms {
    scores: BTreeMap<(String, u64), VersionScore>,
    resources: HashMap<String, Resource>,
}

impl LiveAlarms {
    /// Takes one sample: the resource's type, the model version that predicted it (0: no trained
    /// model), its time, whether its alarm is raised, and whether it is labelled a failure.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        resource_id: &str,
        resource_type: &str,
        version: u64,
        ts_s: f64,
        alarm_on: bool,
        failure: bool,
        horizon_s: f64,
    ) {
        let r = self
            .resources
            .entry(resource_id.to_owned())
            .or_insert(Resource {
                last_ts: ts_s,
                on: false,
                open: Vec::new(),
            });
        let gap = (ts_s - r.last_ts).clamp(0.0, MAX_GAP_S);
        r.last_ts = r.last_ts.max(ts_s);
        self.scores
            .entry((resource_type.to_owned(), version))
            .or_default()
            .resource_s += gap;
        if failure {
            // Every open episode that started within the horizon was a true alarm.
            for (v, start) in r.open.drain(..) {
                let s = self
                    .scores
                    .entry((resource_type.to_owned(), v))
                    .or_default();
                s.episodes += 1;
                if ts_s - start > horizon_s {
                    s.false_alarms += 1;
                }
            }
        }
        // Episodes older than the horizon with no failure were false.
        let mut expired = Vec::new();
        r.open.retain(|&(v, start)| {
            let old = ts_s - start > horizon_s;
            if old {
                expired.push(v);
            }
            !old
        });
        for v in expired {
            let s = self
                .scores
                .entry((resource_type.to_owned(), v))
                .or_default();
            s.episodes += 1;
            s.false_alarms += 1;
        }
        if alarm_on && !r.on {
            r.open.push((version, ts_s));
        }
        r.on = alarm_on;
    }

    pub fn score(&self, resource_type: &str, version: u64) -> Option<&VersionScore> {
        self.scores.get(&(resource_type.to_owned(), version))
    }

    /// Whether `current` should be reverted to `previous`: both judged on enough exposure, and
    /// `current`'s false-alarm rate at least [`WORSE_BY`] times `previous`'s with at least
    /// [`MIN_FALSE`] false alarms.
    pub fn worse(&self, resource_type: &str, current: u64, previous: u64) -> bool {
        let (Some(c), Some(p)) = (
            self.score(resource_type, current),
            self.score(resource_type, previous),
        ) else {
            return false;
        };
        c.resource_s / 3600.0 >= MIN_HOURS
            && p.resource_s / 3600.0 >= MIN_HOURS
            && c.false_alarms >= MIN_FALSE
            && c.rate() > WORSE_BY * p.rate()
    }

    /// Forgets resources not seen since `before` (their open episodes stay unjudged).
    pub fn forget_before(&mut self, before_s: f64) {
        self.resources.retain(|_, r| r.last_ts >= before_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hours` of one sample a second on `resources` resources, an alarm episode of 10 s every
    /// `every` seconds on each; a failure label 60 s after every `true_every`-th episode.
    fn serve(
        live: &mut LiveAlarms,
        version: u64,
        from_s: f64,
        hours: f64,
        every: usize,
        true_every: usize,
    ) -> f64 {
        let end = from_s + hours * 3600.0;
        let mut t = from_s;
        let mut k = 0usize;
        while t < end {
            let i = (t - from_s) as usize;
            let phase = i % every;
            let on = phase < 10;
            if phase == 0 {
                k += 1;
            }
            let failure = phase == 60 && k.is_multiple_of(true_every);
            for r in 0..3 {
                live.observe(&format!("r{r}"), "service", version, t, on, failure, 300.0);
            }
            t += 1.0;
        }
        end
    }

    #[test]
    fn a_version_that_raises_more_false_alarms_than_its_predecessor_is_worse() {
        let mut live = LiveAlarms::default();
        // v1: an episode every 30 min per resource, every second one followed by a failure.
        let t = serve(&mut live, 1, 0.0, 2.0, 1800, 2);
        // v2: an episode every 5 min, every tenth followed by a failure.
        serve(&mut live, 2, t, 2.0, 300, 10);
        let (v1, v2) = (
            live.score("service", 1).expect("v1").clone(),
            live.score("service", 2).expect("v2").clone(),
        );
        assert!((v1.resource_s / 3600.0 - 6.0).abs() < 0.1, "{v1:?}");
        assert_eq!((v1.episodes, v1.false_alarms), (12, 6), "{v1:?}");
        assert!(v2.false_alarms > 60, "{v2:?}");
        assert!(live.worse("service", 2, 1));
        assert!(!live.worse("service", 1, 2));
        // Too little exposure is not judged.
        let mut short = LiveAlarms::default();
        let t = serve(&mut short, 1, 0.0, 0.2, 1800, 2);
        serve(&mut short, 2, t, 0.2, 60, 100);
        assert!(!short.worse("service", 2, 1));
    }

    #[test]
    fn an_episode_followed_by_a_failure_within_the_horizon_is_true() {
        let mut live = LiveAlarms::default();
        for t in 0..100 {
            let on = (10..20).contains(&t);
            live.observe("a", "service", 3, f64::from(t), on, t == 80, 300.0);
        }
        let s = live.score("service", 3).expect("scored");
        assert_eq!((s.episodes, s.false_alarms), (1, 0));
        // An episode with no failure in the horizon is false once the horizon has passed.
        for t in 100..500 {
            let on = (110..120).contains(&t);
            live.observe("a", "service", 3, f64::from(t), on, false, 300.0);
        }
        let s = live.score("service", 3).expect("scored");
        assert_eq!((s.episodes, s.false_alarms), (2, 1));
    }
}
