//! The second failure-injection family (`wild`), written after the engine's settings were chosen
//! on the first (`failures`, seed 1007), with other habits, so that it judges them on data they
//! were not tuned on:
//!
//! - heavy-tailed noise (Student's t with 3 degrees of freedom, clipped at 6) instead of Gaussian;
//! - a daily-like cycle on CPU, queue and memory (a period of 20 to 45 minutes, as the traces are
//!   1.5 hours long);
//! - deploys: small level shifts of memory and CPU at random times;
//! - missing samples: 2 % of samples lose one metric, and one or two gaps of 20 to 60 s lose all;
//! - failures that step (a leak that pauses and resumes), accelerate (a fill that grows
//!   exponentially), peg (CPU held just under its limit before it goes over) or come in bursts
//!   (errors), and benign look-alikes that shift (a deploy), nearly fail and recover (a disk
//!   cleaned up at 0.92), or cycle hard (a busy period every cycle).
//!
//! The limits are the first family's (`failures::limits`), given alike to every
//! detector. A failure is when a metric's true value (observed or not) crosses its limit; that
//! sample is always observed.

use std::collections::BTreeMap;

use super::failures::{
    Family, Scenario, Trace, crosses_a_limit, gauss, generate_with, sample, uniform,
};
use crate::anomaly::iforest::SplitMix64;

/// `per_scenario` traces of every scenario of `family`, about `seconds` long each (failing ones
/// end at the failure).
pub fn generate_family(
    family: Family,
    seed: u64,
    per_scenario: usize,
    seconds: usize,
) -> Vec<Trace> {
    match family {
        Family::Classic => {
            generate_with(family, seed, per_scenario, seconds, super::failures::trace)
        }
        Family::Wild => generate_with(family, seed, per_scenario, seconds, trace),
    }
}

/// Student's t with 3 degrees of freedom (variance 3), clipped at +-6.
fn t3(rng: &mut SplitMix64) -> f64 {
    let z = gauss(rng);
    let chi: f64 = (0..3).map(|_| gauss(rng).powi(2)).sum::<f64>() / 3.0;
    (z / chi.sqrt().max(1e-6)).clamp(-6.0, 6.0)
}

/// One trace of a `wild` scenario, one sample a second.
pub fn trace(
    rng: &mut SplitMix64,
    scenario: Scenario,
    resource_id: String,
    seconds: usize,
) -> Trace {
    let onset = (uniform(rng, 0.3, 0.6) * seconds as f64) as usize;
    let mem0 = uniform(rng, 0.3, 0.6);
    let disk0 = uniform(rng, 0.35, 0.7);
    let cpu0 = uniform(rng, 0.1, 0.4);
    let err0 = uniform(rng, 0.0005, 0.005);
    let q0 = uniform(rng, 3.0, 40.0);
    let period = uniform(rng, 1200.0, 2700.0);
    let phase = uniform(rng, 0.0, std::f64::consts::TAU);
    let ramp = uniform(rng, 900.0, 2400.0);
    let fast = uniform(rng, 600.0, 1800.0);
    // Deploys: up to two small level shifts.
    let deploys: Vec<(usize, f64, f64)> = (0..(rng.next_u64() % 3))
        .map(|_| {
            (
                (uniform(rng, 0.05, 0.95) * seconds as f64) as usize,
                uniform(rng, -0.03, 0.03),
                uniform(rng, -0.03, 0.03),
            )
        })
        .collect();
    // Gaps: one or two stretches of 20 to 60 s without any sample.
    let gaps: Vec<(usize, usize)> = (0..1 + rng.next_u64() % 2)
        .map(|_| {
            let at = (uniform(rng, 0.05, 0.95) * seconds as f64) as usize;
            (at, at + uniform(rng, 20.0, 60.0) as usize)
        })
        .collect();
    // The stepped leak's pattern: growing for 200-500 s, pausing for 100-400 s, and again.
    let mut steps = Vec::new();
    let mut at = 0.0;
    while at < seconds as f64 {
        let grow = uniform(rng, 200.0, 500.0);
        let pause = uniform(rng, 100.0, 400.0);
        steps.push((at, at + grow, at + grow + pause));
        at += grow + pause;
    }
    // The pegged CPU: climb, hold, go over.
    let climb = uniform(rng, 300.0, 900.0);
    let hold = uniform(rng, 120.0, 480.0);
    let over = uniform(rng, 60.0, 120.0);
    // The near miss: climb, stay, clean up.
    let near_up = uniform(rng, 300.0, 900.0);
    let near_stay = uniform(rng, 60.0, 180.0);
    let metric_names = [
        "mem_used_ratio",
        "disk_used_ratio:/",
        "cpu_util",
        "error_rate",
        "queue_len",
    ];
    let mut burst_until = 0usize;
    let mut samples = Vec::with_capacity(seconds);
    let mut failure_at = None;
    for t in 0..seconds {
        let since = t.saturating_sub(onset) as f64;
        let active = t >= onset;
        let season = (std::f64::consts::TAU * t as f64 / period + phase).sin();
        let (dmem, dcpu) = deploys
            .iter()
            .filter(|d| t >= d.0)
            .fold((0.0, 0.0), |a, d| (a.0 + d.1, a.1 + d.2));
        let mut mem = mem0 + dmem + 0.01 * season + 0.003 * t3(rng);
        let mut disk = disk0 + 0.0004 * t3(rng);
        let mut cpu = cpu0 + dcpu + 0.08 * season + 0.03 * t3(rng);
        let mut err = err0 * (1.0 + 0.25 * t3(rng)).max(0.0);
        let mut queue = q0 * (1.0 + 0.3 * season) * (1.0 + 0.25 * t3(rng)).max(0.0);
        if active {
            match scenario {
                Scenario::SteppedLeak => {
                    // Time spent growing so far.
                    let grown: f64 = steps
                        .iter()
                        .map(|(a, b, _)| (since.min(*b) - a).max(0.0))
                        .sum();
                    mem += (0.95 - mem0) * grown / ramp;
                }
                Scenario::AcceleratingFill => {
                    let k = 3.0;
                    disk += (0.95 - disk0) * ((k * since / fast).exp() - 1.0) / (k.exp() - 1.0);
                }
                Scenario::QueueRunaway => queue += 1000.0 * (since / ramp).powf(1.5),
                Scenario::CpuPegged => {
                    let peg = 0.965;
                    let base = cpu0 + dcpu;
                    cpu = if since < climb {
                        base + (peg - base) * since / climb + 0.03 * t3(rng)
                    } else if since < climb + hold {
                        // Pegged: flat, a little noise.
                        peg + 0.004 * t3(rng)
                    } else {
                        peg + 0.03 * (since - climb - hold) / over + 0.004 * t3(rng)
                    };
                }
                Scenario::ErrorBursts => {
                    if t >= burst_until && rng.next_f64() < 1.0 / 200.0 {
                        burst_until = t + uniform(rng, 10.0, 30.0) as usize;
                    }
                    let burst = if t < burst_until { 2.0 } else { 1.0 };
                    err *= burst * (since / ramp * (0.05f64 / err0).ln()).exp();
                }
                Scenario::DeployShift => {
                    mem = (mem + 0.2).min(0.85);
                    cpu += 0.1;
                }
                Scenario::NearMiss => {
                    let up = if since < near_up {
                        since / near_up
                    } else if since < near_up + near_stay {
                        1.0
                    } else {
                        (1.0 - (since - near_up - near_stay) / 60.0).max(0.0)
                    };
                    disk += (0.92 - disk0) * up;
                }
                Scenario::BusyCycle => {
                    let busy = season.max(0.0);
                    cpu += (0.9 - cpu0) * busy;
                    queue += 300.0 * busy;
                }
                _ => {}
            }
        }
        if !scenario.fails() {
            // Benign look-alikes stay under their limits (a noise spike over one is a failure).
            cpu = cpu.min(0.95);
            mem = mem.min(0.9);
            disk = disk.min(0.93);
            err = err.min(0.04);
            queue = queue.min(900.0);
        }
        let m = sample(mem, disk, cpu, err, queue);
        let failed = crosses_a_limit(&m);
        if failed && scenario.fails() && active {
            samples.push(m);
            failure_at = Some(t);
            break;
        }
        // Missing: inside a gap nothing; else 2 % of samples lose one metric.
        let observed = if gaps.iter().any(|(a, b)| (*a..*b).contains(&t)) {
            BTreeMap::new()
        } else if rng.next_f64() < 0.02 {
            let drop = metric_names[(rng.next_u64() % 5) as usize];
            m.into_iter().filter(|(k, _)| k != drop).collect()
        } else {
            m
        };
        samples.push(observed);
    }
    Trace {
        resource_id,
        scenario,
        samples,
        failure_at,
    }
}

#[cfg(test)]
mod tests {
    use super::super::failures::Family;
    use super::generate_family;

    #[test]
    fn the_wild_family_is_seeded_fails_where_it_should_and_has_gaps() {
        let a = generate_family(Family::Wild, 5, 3, 5400);
        let b = generate_family(Family::Wild, 5, 3, 5400);
        assert_eq!(a.len(), 24);
        let mut empty = 0;
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.samples, y.samples);
            assert_eq!(
                x.failure_at.is_some(),
                x.scenario.fails(),
                "{} {:?}",
                x.resource_id,
                x.failure_at
            );
            if let Some(f) = x.failure_at {
                assert_eq!(f + 1, x.samples.len());
                assert_eq!(x.samples[f].len(), 5, "the failure is observed");
            }
            empty += x.samples.iter().filter(|s| s.is_empty()).count();
        }
        assert!(empty > 24 * 20, "gaps: {empty} empty samples");
    }
}
