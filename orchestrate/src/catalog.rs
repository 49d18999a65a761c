//! The service catalog's rules, without I/O: which version of each service is the desired state.
//! Entries arrive from anywhere (an operator's `apply`, a peer's publication, a catch-up after a
//! join, the node's own store at start) already verified as signed by an operator; the catalog
//! keeps, per service name, the highest version seen, a deletion being a version too (a tombstone,
//! so an older apply replayed later cannot bring a deleted service back).

use std::collections::BTreeMap;

use crate::spec::ServiceSpec;

/// One version of a service: its spec, or its deletion.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub version: u64,
    /// `None`: deleted at this version.
    pub spec: Option<ServiceSpec>,
}

/// What became of an entry offered to the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It is the service's new desired state.
    Accepted,
    /// The catalog already holds this version (from another path): nothing changes.
    Duplicate,
    /// Older than the version held (or the same version, with a content that orders lower than
    /// the one held): refused.
    Stale { held: u64 },
}

/// An entry's content as text, to order two different entries of one version the same way on
/// every node (a deletion orders first).
fn canonical(e: &Entry) -> Option<String> {
    e.spec
        .as_ref()
        .map(|s| toml::to_string(&crate::spec::SpecFile { service: s.clone() }).unwrap_or_default())
}

/// The desired state of the fleet's services.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    entries: BTreeMap<String, Entry>,
}

impl Catalog {
    /// Offers `entry` for service `name`.
    pub fn offer(&mut self, name: &str, entry: Entry) -> Outcome {
        match self.entries.get(name) {
            Some(held) if held.version > entry.version => Outcome::Stale { held: held.version },
            Some(held) if held.version == entry.version => {
                if *held == entry {
                    Outcome::Duplicate
                } else if canonical(&entry) > canonical(held) {
                    // Two different documents under one version (two operators raced): every
                    // node keeps the same one, whatever order they arrive in.
                    self.entries.insert(name.to_owned(), entry);
                    Outcome::Accepted
                } else {
                    Outcome::Stale { held: held.version }
                }
            }
            _ => {
                self.entries.insert(name.to_owned(), entry);
                Outcome::Accepted
            }
        }
    }

    /// The services to run (deleted ones left out), by name.
    pub fn services(&self) -> impl Iterator<Item = (&str, u64, &ServiceSpec)> {
        self.entries
            .iter()
            .filter_map(|(n, e)| e.spec.as_ref().map(|s| (n.as_str(), e.version, s)))
    }

    /// Every service's version held, deletions included.
    pub fn versions(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(n, e)| (n.as_str(), e.version))
    }

    /// The version held for `name` (a deletion included).
    pub fn version(&self, name: &str) -> Option<u64> {
        self.entries.get(name).map(|e| e.version)
    }

    /// The version an operator's next change to `name` should carry.
    pub fn next_version(&self, name: &str) -> u64 {
        self.version(name).map_or(1, |v| v + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16) -> ServiceSpec {
        ServiceSpec::from_toml(&format!(
            r#"
            [service]
            name = "web"
            port = {port}
            [service.driver]
            kind = "process"
            command = "/usr/bin/web"
            [service.health]
            "#
        ))
        .expect("spec")
    }

    fn entry(version: u64, spec: Option<ServiceSpec>) -> Entry {
        Entry { version, spec }
    }

    #[test]
    fn the_highest_version_wins_and_deletions_stay_deleted() {
        let mut c = Catalog::default();
        let steps: Vec<(Entry, Outcome, Option<u16>)> = vec![
            (entry(1, Some(spec(8080))), Outcome::Accepted, Some(8080)),
            (entry(1, Some(spec(8080))), Outcome::Duplicate, Some(8080)),
            // Same version, other content: the same one wins on every node, in any order.
            (entry(1, Some(spec(9090))), Outcome::Accepted, Some(9090)),
            (
                entry(1, Some(spec(8080))),
                Outcome::Stale { held: 1 },
                Some(9090),
            ),
            (entry(3, Some(spec(9090))), Outcome::Accepted, Some(9090)),
            (
                entry(2, Some(spec(7070))),
                Outcome::Stale { held: 3 },
                Some(9090),
            ),
            (entry(4, None), Outcome::Accepted, None),
            // An older apply replayed after the deletion does not bring the service back.
            (entry(3, Some(spec(9090))), Outcome::Stale { held: 4 }, None),
            (entry(5, Some(spec(6060))), Outcome::Accepted, Some(6060)),
        ];
        for (i, (e, want, port)) in steps.into_iter().enumerate() {
            assert_eq!(c.offer("web", e), want, "step {i}");
            let ports: Vec<u16> = c.services().map(|(_, _, s)| s.port).collect();
            assert_eq!(ports, port.into_iter().collect::<Vec<_>>(), "step {i}");
        }
        assert_eq!(c.next_version("web"), 6);
        assert_eq!(c.next_version("api"), 1);
    }

    /// Seeded orders of the same entries, conflicting ones included (two documents under one
    /// version), end in the same catalog: replicas converge whatever order publications and
    /// catch-ups arrive in.
    #[test]
    fn any_order_of_the_same_entries_converges() {
        let entries: Vec<(&str, Entry)> = vec![
            ("web", entry(1, Some(spec(8080)))),
            ("web", entry(2, Some(spec(8081)))),
            ("web", entry(3, None)),
            ("web", entry(3, Some(spec(8082)))),
            ("api", entry(1, Some(spec(9090)))),
            ("api", entry(1, Some(spec(9089)))),
            ("api", entry(2, Some(spec(9091)))),
        ];
        let mut reference = Catalog::default();
        for (n, e) in entries.iter().cloned() {
            reference.offer(n, e);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let mut order = entries.clone();
            for i in (1..order.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut c = Catalog::default();
            for (n, e) in order {
                c.offer(n, e);
            }
            assert_eq!(c, reference);
        }
    }
}
