//! Where a service's replicas run, without I/O: every node computes the same placement from the
//! same catalog version and the same membership view (the input is sorted before anything is
//! decided, and ties are broken by PeerId).
//!
//! A replica pinned to a node goes there if the node is eligible. The others go, one at a time, to
//! the eligible node with the best score:
//! - eligible: alive, in an allowed zone, carrying the required labels, with the required free
//!   memory and CPU, and (with anti-affinity, the default) not already holding a replica;
//! - score: `100 * (1 - failure_probability)` (a node predicted to fail gets nothing new)
//!   `+ 20 * (replicas in the fullest zone - replicas in this node's zone)` (spread over zones)
//!   `+ 10 * cpu_free` `- 30 * replicas already on the node` (only without anti-affinity).
//!
//! When views differ (a node not yet seen dead, a capacity value not yet arrived), two nodes may
//! compute different placements for a while: a replica may be started twice, or by nobody, until
//! their views agree. The migrations issue closes this with leases: a replica is started only by
//! the holder of its lease, granted by a majority with a fencing epoch.

use std::collections::BTreeMap;

use crate::spec::ServiceSpec;

/// A node as placement sees it (from the member view: placement, capacity and health values).
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub peer_id: String,
    pub node_name: String,
    pub alive: bool,
    pub zone: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub free_memory_bytes: u64,
    /// Free CPU, a fraction of the node (0..1).
    pub cpu_free: f64,
    /// The node's riskiest resource's failure probability.
    pub failure_probability: f64,
}

/// The nodes chosen for each replica (by node name, replica order), and how many could not be
/// placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub nodes: Vec<String>,
    pub unplaced: u32,
}

fn eligible(spec: &ServiceSpec, c: &Candidate) -> bool {
    let p = &spec.placement;
    c.alive
        && (p.zones.is_empty() || c.zone.as_ref().is_some_and(|z| p.zones.contains(z)))
        && p.labels.iter().all(|(k, v)| c.labels.get(k) == Some(v))
        && p.min_free_memory
            .is_none_or(|m| c.free_memory_bytes >= m.as_u64())
        && p.min_free_cpu.is_none_or(|m| c.cpu_free >= m)
}

/// Places the replicas of `spec` on `candidates`.
pub fn place(spec: &ServiceSpec, candidates: &[Candidate]) -> Placement {
    let per_replica = place_with(spec, candidates, &BTreeMap::new());
    Placement {
        unplaced: per_replica.iter().filter(|n| n.is_none()).count() as u32,
        nodes: per_replica.into_iter().flatten().collect(),
    }
}

/// Places the replicas of `spec` on `candidates`, replica `i` on `fixed[i]` when that node is
/// eligible (a migration's assignment), then the pinned ones, then the rest by score; the node
/// (by name) of each replica, in replica order (`None`: no eligible node left).
pub fn place_with(
    spec: &ServiceSpec,
    candidates: &[Candidate],
    fixed: &BTreeMap<usize, String>,
) -> Vec<Option<String>> {
    let mut nodes: Vec<&Candidate> = candidates.iter().filter(|c| eligible(spec, c)).collect();
    nodes.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    let anti = spec.placement.anti_affinity;
    let mut on_node: BTreeMap<&str, u32> = BTreeMap::new();
    let mut in_zone: BTreeMap<Option<&str>, u32> = BTreeMap::new();
    let replicas = spec.replicas as usize;
    let mut chosen: Vec<Option<String>> = vec![None; replicas];
    let wanted = |replica: usize| fixed.get(&replica).or_else(|| spec.pin.get(replica));
    // Replicas with a node named first (fixed, then pinned), so the free ones fill around them.
    let mut order: Vec<usize> = (0..replicas).collect();
    order.sort_by_key(|r| (!fixed.contains_key(r), wanted(*r).is_none(), *r));
    for replica in order {
        let named = wanted(replica).and_then(|name| {
            nodes
                .iter()
                .find(|c| {
                    c.node_name == *name && !(anti && on_node.contains_key(c.peer_id.as_str()))
                })
                .copied()
        });
        let pick = match (named, spec.pin.get(replica)) {
            (Some(c), _) => Some(c),
            // Pinned to a node that cannot take it: unplaced (as before).
            (None, Some(_)) if !fixed.contains_key(&replica) => None,
            // A fixed node gone (dead, or no longer eligible): placed again by score.
            _ => {
                let fullest = in_zone.values().copied().max().unwrap_or(0);
                nodes
                    .iter()
                    .filter(|c| !(anti && on_node.contains_key(c.peer_id.as_str())))
                    .map(|c| {
                        let here = on_node.get(c.peer_id.as_str()).copied().unwrap_or(0);
                        let zone = in_zone.get(&c.zone.as_deref()).copied().unwrap_or(0);
                        let score = 100.0 * (1.0 - c.failure_probability.clamp(0.0, 1.0))
                            + 20.0 * f64::from(fullest - zone)
                            + 10.0 * c.cpu_free.clamp(0.0, 1.0)
                            - 30.0 * f64::from(here);
                        (score, *c)
                    })
                    // Highest score; on a tie the lowest PeerId (the first in sorted order).
                    .fold(None::<(f64, &Candidate)>, |best, (s, c)| match best {
                        Some((bs, _)) if bs >= s => best,
                        _ => Some((s, c)),
                    })
                    .map(|(_, c)| c)
            }
        };
        if let Some(c) = pick {
            *on_node.entry(c.peer_id.as_str()).or_default() += 1;
            *in_zone.entry(c.zone.as_deref()).or_default() += 1;
            chosen[replica] = Some(c.node_name.clone());
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str, placement: &str) -> ServiceSpec {
        ServiceSpec::from_toml(&format!(
            "[service]\nname = \"web\"\nport = 8080\n{extra}\n\
             [service.driver]\nkind = \"process\"\ncommand = \"/bin/web\"\n\
             [service.health]\n[service.placement]\n{placement}\n"
        ))
        .expect("spec")
    }

    fn node(name: &str, zone: &str, p: f64, cpu: f64) -> Candidate {
        Candidate {
            peer_id: format!("peer-{name}"),
            node_name: name.to_owned(),
            alive: true,
            zone: Some(zone.to_owned()),
            labels: BTreeMap::new(),
            free_memory_bytes: 8 << 30,
            cpu_free: cpu,
            failure_probability: p,
        }
    }

    #[test]
    fn a_fixed_replica_stays_on_its_node_while_it_is_eligible() {
        let s = spec("replicas = 2", "");
        let mut view = vec![
            node("a", "z1", 0.0, 0.9),
            node("b", "z1", 0.0, 0.5),
            node("c", "z2", 0.0, 0.1),
        ];
        let free = place_with(&s, &view, &BTreeMap::new());
        assert_eq!(free, [Some("a".to_owned()), Some("c".to_owned())]);
        // Replica 0 moved to b: it stays there, and replica 1 keeps to another node.
        let fixed = BTreeMap::from([(0, "b".to_owned())]);
        let moved = place_with(&s, &view, &fixed);
        assert_eq!(moved[0].as_deref(), Some("b"));
        assert!(
            moved[1].is_some() && moved[1].as_deref() != Some("b"),
            "{moved:?}"
        );
        // b dies: replica 0 is placed again by score.
        view[1].alive = false;
        let again = place_with(&s, &view, &fixed);
        assert!(
            again.iter().all(|n| n.as_deref().is_some_and(|n| n != "b")),
            "{again:?}"
        );
    }

    #[test]
    fn placement_rules() {
        let fleet = vec![
            node("a1", "a", 0.0, 0.5),
            node("a2", "a", 0.0, 0.9),
            node("b1", "b", 0.0, 0.2),
            node("c1", "c", 0.95, 0.9),
        ];
        /// (name, spec, view, nodes chosen, replicas unplaced).
        type Case = (
            &'static str,
            ServiceSpec,
            Vec<Candidate>,
            Vec<&'static str>,
            u32,
        );
        let cases: Vec<Case> = vec![
            (
                "spread over zones first, the freer node within a zone, the failing node last",
                spec("replicas = 3", ""),
                fleet.clone(),
                vec!["a2", "b1", "a1"],
                0,
            ),
            (
                "anti-affinity: never two on a node; too few nodes leaves replicas unplaced",
                spec("replicas = 6", "zones = [\"a\"]"),
                fleet.clone(),
                vec!["a2", "a1"],
                4,
            ),
            (
                "without anti-affinity, a node may take several (each costs it 30)",
                spec("replicas = 3", "zones = [\"b\"]\nanti_affinity = false"),
                fleet.clone(),
                vec!["b1", "b1", "b1"],
                0,
            ),
            (
                "labels and free capacity filter nodes",
                spec("replicas = 1", "labels = { disk = \"ssd\" }"),
                {
                    let mut f = fleet.clone();
                    f[2].labels.insert("disk".into(), "ssd".into());
                    f
                },
                vec!["b1"],
                0,
            ),
            (
                "free memory below the minimum excludes a node",
                spec("replicas = 2", "min_free_memory = \"16 GiB\""),
                {
                    let mut f = fleet.clone();
                    f[0].free_memory_bytes = 32 << 30;
                    f
                },
                vec!["a1"],
                1,
            ),
            (
                "pinned replicas go to their node; a dead pinned node leaves its replica unplaced",
                spec("replicas = 2\npin = [\"c1\", \"a1\"]", ""),
                {
                    let mut f = fleet.clone();
                    f[0].alive = false;
                    f
                },
                vec!["c1"],
                1,
            ),
        ];
        for (name, spec, candidates, want, unplaced) in cases {
            let got = place(&spec, &candidates);
            assert_eq!(got.nodes, want, "{name}");
            assert_eq!(got.unplaced, unplaced, "{name}");
        }
    }

    /// The same view in any order gives the same placement (every node computes the same).
    #[test]
    fn the_order_of_the_view_does_not_matter() {
        let mut fleet: Vec<Candidate> = (0..12)
            .map(|i| {
                node(
                    &format!("n{i}"),
                    ["a", "b", "c"][i % 3],
                    0.01 * i as f64,
                    0.5,
                )
            })
            .collect();
        // Ties too: two nodes exactly alike but for their PeerId.
        fleet.push(node("twin", "a", 0.0, 0.5));
        let s = spec("replicas = 5", "");
        let reference = place(&s, &fleet);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100 {
            for i in (1..fleet.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                fleet.swap(i, (state % (i as u64 + 1)) as usize);
            }
            assert_eq!(place(&s, &fleet), reference);
        }
    }
}
