//! Federated models in the in-process harness: real meshes (`augur_mesh::sim`: membership over the
//! in-memory datagram network, libp2p over its memory transport), each node with its own durable
//! history, model store, trainer thread, leases (for a cold start's asks) and federation task, as
//! `agent.rs` wires them. One node is Byzantine: admitted, so its updates pass the transport, and
//! it sends what an attacker would. The clock is real, not paused: a training is seconds of CPU
//! on the trainer's own thread, which a paused clock would skip past.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use augur_mesh::Tasks;
use augur_mesh::leases::Leases;
use augur_mesh::sim::{SimConfig, SimFleet};
use augur_models::anomaly::iforest::SplitMix64;
use augur_models::federated::ModelUpdate;
use augur_models::forecast::mlp::MlpWeights;
use augur_proto::{ResourceId, ResourceType};
use tokio::sync::watch;

use crate::config::Config;
use crate::fleet::events::{Emitter, EventLog};
use crate::history::History;
use crate::models::{FederationDecision, ModelStore, Trainer};
use crate::sample::{Sample, UnixMicros};
use crate::stats::Stats;

struct Node {
    _dir: tempfile::TempDir,
    models: ModelStore,
    stats: Arc<Stats>,
    trainer: Trainer,
    _tasks: Tasks,
    /// Held as the agent's follow tasks hold them: the leases stop serving when theirs closes.
    _senders: (
        watch::Sender<Arc<Config>>,
        watch::Sender<augur_mesh::leases::LeaseConfig>,
    ),
}

/// `n` samples of one `service` resource ending now: a sine with this node's level, period and
/// phase, plus seeded noise.
fn series(resource: &str, n: i64, level: f64, period: f64, seed: u64) -> Vec<Sample> {
    let mut rng = SplitMix64::new(seed);
    let start = UnixMicros::now().0 - n * 1_000_000;
    (0..n)
        .map(|t| {
            let x = t as f64;
            let cpu = level
                + 10.0 * (std::f64::consts::TAU * x / period + seed as f64).sin()
                + rng.next_f64();
            Sample {
                ts: UnixMicros(start + t * 1_000_000),
                resource_id: ResourceId::parse(resource).expect("id"),
                resource_type: ResourceType::parse("service").expect("type"),
                metrics: BTreeMap::from([
                    ("cpu".to_owned(), cpu),
                    ("mem".to_owned(), 0.4 + 0.002 * cpu + 0.01 * rng.next_f64()),
                ]),
                event: None,
                labels: BTreeMap::new(),
            }
        })
        .collect()
}

fn config(tolerate: usize) -> Config {
    let mut cfg = Config::default();
    cfg.models.train = false;
    cfg.models.federate = true;
    cfg.models.federation_tolerate = tolerate;
    cfg
}

/// Starts a node's history, models, trainer and federation task on `fleet`'s mesh `name`.
fn start(fleet: &SimFleet, name: &str, cfg: Config, samples: &[Sample], seed: u64) -> Node {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mesh = fleet.mesh(name).clone();
    let tasks = Tasks::default();
    let history = History::open(dir.path(), 8 << 20, cfg.history.window).expect("history");
    history.write(samples).expect("history written");
    let models = ModelStore::open(dir.path());
    let stats = Arc::new(Stats::new());
    let (tx_config, rx_config) = watch::channel(Arc::new(cfg));
    let acting = crate::migrate::store::ActStore::open(dir.path()).expect("acting store");
    let (tx_lease, rx_lease) = watch::channel(None);
    let leases = Leases::start(
        mesh.swarm.clone(),
        Arc::new(acting),
        rx_lease,
        seed,
        None,
        &tasks,
    );
    let (trainer, mut task) =
        crate::models::trainer(history.clone(), models.clone(), rx_config, stats.clone());
    let (tx_own, rx_own) = tokio::sync::mpsc::channel(8);
    task.share_on(tx_own);
    tasks.spawn("models.trainer", task.run(tasks.token()));
    tasks.spawn(
        "models.federation",
        super::run(
            super::Federation {
                mesh: mesh.clone(),
                leases: Some(leases),
                trainer: trainer.clone(),
                history,
                models: models.clone(),
                stats: stats.clone(),
                emitter: Emitter {
                    mesh: Some(mesh),
                    log: EventLog::new(256),
                    node_name: name.to_owned(),
                },
            },
            rx_own,
            tasks.token(),
        ),
    );
    Node {
        _dir: dir,
        models,
        stats,
        trainer,
        _tasks: tasks,
        _senders: (tx_config, tx_lease),
    }
}

/// Waits (real time, polling the store every 50 ms, at most `secs`) for a decision of `node`'s
/// that `pick` accepts.
async fn decision(
    node: &Node,
    secs: u64,
    pick: impl Fn(&FederationDecision) -> bool,
) -> FederationDecision {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(d) = node.models.decisions().into_iter().rev().find(|d| pick(d)) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no such decision in {secs} s: {:?}",
            node.models.decisions()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn coordinates(m: &MlpWeights) -> Vec<f32> {
    m.layers
        .iter()
        .flat_map(|l| l.weight.iter().chain(&l.bias).copied())
        .collect()
}

/// Whether every coordinate of `m` lies within the honest updates' range (with float slack).
fn within(m: &MlpWeights, honest: &[&MlpWeights]) -> bool {
    let hs: Vec<Vec<f32>> = honest.iter().map(|h| coordinates(h)).collect();
    coordinates(m).iter().enumerate().all(|(i, v)| {
        let lo = hs.iter().map(|h| h[i]).fold(f32::INFINITY, f32::min);
        let hi = hs.iter().map(|h| h[i]).fold(f32::NEG_INFINITY, f32::max);
        *v >= lo - 1e-4 && *v <= hi + 1e-4
    })
}

fn encode(u: &ModelUpdate) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(u, &mut out).expect("cbor");
    out
}

/// Four honest nodes with different data and one Byzantine node. Honest nodes merge each other's
/// models. Then the Byzantine node sends, round after round, a sign-flipped network, one scaled
/// by 100, random weights, and a model it trained on poisoned labels (its targets shuffled in time
/// and failures labelled at random), each claiming a billion samples. Under the trimmed mean
/// (f = 1), the model in use at every robust node stays within the honest updates' range, and
/// its candidates stay close to the model in use; the node that averages plainly (f = 0) gets
/// candidates many times worse, which only its adoption guard keeps out. A replayed round is
/// refused and counted; a tampered update and one signed by a node outside the fleet never
/// reach the models. A node that joins later starts from the fleet's models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robust_merges_hold_against_a_byzantine_peer_and_a_new_node_starts_from_the_fleet() {
    let mut fleet = SimFleet::new(
        71,
        SimConfig {
            gossip_interval: Duration::from_millis(100),
            ..SimConfig::default()
        },
    );
    let honest = ["h1", "h2", "h3", "h4"];
    fleet.join_all(honest.iter().copied().chain(["byz"])).await;
    fleet.join_forged("out").await;
    fleet.converge().await.expect("the fleet converges");
    let names: Vec<&str> = honest.iter().copied().chain(["byz"]).collect();
    fleet
        .until(Duration::from_secs(60), |f| {
            names
                .iter()
                .all(|x| names.iter().all(|y| x == y || f.connected(x, y)))
        })
        .await
        .expect("every pair connected");
    let mut nodes = BTreeMap::new();
    for (i, n) in honest.iter().enumerate() {
        let data = series(
            &format!("svc-{n}"),
            1_800,
            40.0 + 10.0 * i as f64,
            60.0 + 20.0 * i as f64,
            i as u64 + 1,
        );
        // h4 averages plainly; the others tolerate one bad update.
        let cfg = config(if *n == "h4" { 0 } else { 1 });
        nodes.insert(*n, start(&fleet, n, cfg, &data, i as u64 + 1));
    }
    // What each honest node publishes, as the Byzantine node receives it.
    let byz = fleet.mesh("byz").clone();
    let mut heard = byz.subscribe_model_updates();

    // Round 0: each honest node trains and shares; each merges the others'.
    let trainings = nodes.values().map(|n| n.trainer.train_now());
    for t in futures::future::join_all(trainings).await {
        let t = t.expect("the trainer answers");
        assert!(t.iter().all(|o| o.trained.is_some()), "{t:?}");
    }
    let mut updates: BTreeMap<String, ModelUpdate> = BTreeMap::new();
    while updates.len() < honest.len() {
        let (author, body) = tokio::time::timeout(Duration::from_secs(30), heard.recv())
            .await
            .expect("every honest update reaches the Byzantine node")
            .expect("an update");
        let u: ModelUpdate = ciborium::from_reader(body.as_slice()).expect("an update");
        updates.insert(author.to_string(), u);
    }
    let honest_mlps: Vec<MlpWeights> = updates
        .values()
        .map(|u| u.mlp.clone().expect("an MLP"))
        .collect();
    let honest_refs: Vec<&MlpWeights> = honest_mlps.iter().collect();
    // Each node's honest merge (itself and the three others), and how it did on its history:
    // the reference the attacks are measured against.
    let mut honest_merge = BTreeMap::new();
    for (n, node) in &nodes {
        let d = decision(node, 60, |d| d.lineage.contributors.len() == 4).await;
        assert!(
            ["adopted", "rejected", "adopted_parts"].contains(&d.outcome.as_str()),
            "{n}: {d:?}"
        );
        honest_merge.insert(*n, d.lineage.mse_candidate.expect("judged"));
    }

    // The attacks, one round each, built on h1's update.
    let base = updates[&fleet.peer_id("h1")].clone();
    let base_mlp = base.mlp.clone().expect("an MLP");
    let scaled = |k: f32| {
        let mut m = base_mlp.clone();
        for l in &mut m.layers {
            l.weight
                .iter_mut()
                .chain(l.bias.iter_mut())
                .for_each(|w| *w *= k);
        }
        m
    };
    let mut rng = SplitMix64::new(5);
    let mut random = base_mlp.clone();
    for l in &mut random.layers {
        l.weight
            .iter_mut()
            .chain(l.bias.iter_mut())
            .for_each(|w| *w = (rng.next_f64() as f32 - 0.5) * 8.0);
    }
    // Poisoned labels: h1's own data with each value moved to a random time (every target the
    // network learns is noise) and failures labelled at random.
    let mut poisoned = augur_models::training::ResourceHistory::default();
    let mut shuffled = series("svc-h1", 1_800, 40.0, 60.0, 1);
    for i in (1..shuffled.len()).rev() {
        let j = rng.below(i + 1);
        let (a, b) = (shuffled[i].metrics.clone(), shuffled[j].metrics.clone());
        shuffled[i].metrics = b;
        shuffled[j].metrics = a;
    }
    for s in &shuffled {
        poisoned.push(s.ts.0 as f64 / 1e6, s.metrics.iter());
    }
    poisoned.failures = (0..12)
        .map(|_| shuffled[rng.below(shuffled.len())].ts.0 as f64 / 1e6)
        .collect();
    let cfg = config(1);
    let (engine, _) = crate::models::engine_config(&cfg, "service");
    let trained = augur_models::training::train(
        "service",
        &[poisoned],
        1,
        &engine,
        &crate::models::train_config(&cfg),
    )
    .expect("the poisoned model trains");
    let poisoned_update = crate::models::own_update(&trained).expect("an update");
    let attacks: Vec<(&str, ModelUpdate)> = vec![
        (
            "sign flip",
            ModelUpdate {
                mlp: Some(scaled(-1.0)),
                ..base.clone()
            },
        ),
        (
            "scaled by 100",
            ModelUpdate {
                mlp: Some(scaled(100.0)),
                ..base.clone()
            },
        ),
        (
            "random weights",
            ModelUpdate {
                mlp: Some(random),
                ..base.clone()
            },
        ),
        ("poisoned labels", poisoned_update),
    ];
    let byz_id = fleet.peer_id("byz");
    let mut last_wire = None;
    for (round, (attack, u)) in attacks.into_iter().enumerate() {
        let u = ModelUpdate {
            round: round as u64 + 1,
            samples: 1_000_000_000,
            ..u
        };
        let wire = byz.seal_model_update(encode(&u));
        byz.forward_model_update(wire.clone())
            .await
            .expect("the Byzantine node publishes");
        last_wire = Some(wire);
        for (n, node) in &nodes {
            let d = decision(node, 60, |d| {
                d.lineage
                    .contributors
                    .iter()
                    .any(|c| c.author == byz_id && c.round == round as u64 + 1)
            })
            .await;
            let (honest_cand, cand) = (honest_merge[n], d.lineage.mse_candidate.expect("judged"));
            eprintln!(
                "{attack}: {n} {}: honest merge {honest_cand:.4}, attacked {cand:.4}",
                d.outcome
            );
            if *n == "h4" {
                // Plain averaging is moved: its candidate is far worse than the model in use,
                // kept out only by the adoption guard. (Poisoned labels give a network of honest
                // scale, which averaging blurs rather than wrecks.)
                if attack != "poisoned labels" {
                    assert!(
                        cand > 3.0 * honest_cand,
                        "{attack}, plain: {cand} vs {honest_cand}"
                    );
                    assert_ne!(d.outcome, "adopted", "{attack}: {d:?}");
                }
            } else {
                assert!(
                    cand < 2.5 * honest_cand,
                    "{attack}, {n} robust: {cand} vs {honest_cand}"
                );
                let in_use = node
                    .models
                    .get("service")
                    .and_then(|m| m.mlp.clone())
                    .map(MlpWeights::from)
                    .expect("a model in use");
                assert!(
                    within(&in_use, &honest_refs),
                    "{attack}: {n}'s model in use left the honest range"
                );
            }
        }
    }

    // A replay of the last round is refused by the models; a tampered update and one signed by
    // a node outside the fleet are refused by the mesh and never reach them.
    byz.forward_model_update(last_wire.expect("a wire"))
        .await
        .expect("republished");
    let mut tampered: augur_mesh::model_updates::SignedUpdate =
        ciborium::from_reader(byz.seal_model_update(encode(&base)).as_slice()).expect("cbor");
    tampered.body = encode(&ModelUpdate {
        round: 99,
        ..base.clone()
    });
    let mut wire = Vec::new();
    ciborium::into_writer(&tampered, &mut wire).expect("cbor");
    byz.forward_model_update(wire).await.expect("published");
    let outsider = augur_mesh::model_updates::seal(
        &fleet.nodes["out"].keypair,
        byz.fleet_id(),
        encode(&ModelUpdate {
            round: 100,
            ..base.clone()
        }),
    );
    byz.forward_model_update(outsider).await.expect("published");
    let h1 = &nodes["h1"];
    let h1_mesh = fleet.mesh("h1").model_update_stats.clone();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mesh: BTreeMap<_, _> = h1_mesh.refused().into_iter().collect();
        if h1.stats.model_updates_refused("replayed") >= 1
            && mesh["bad_signature"] >= 1
            && mesh["not_admitted"] >= 1
        {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "refusals: {mesh:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !h1.models
            .decisions()
            .iter()
            .any(|d| d.lineage.contributors.iter().any(|c| c.round >= 99)),
        "nothing forged was merged"
    );

    // A node that joins with five minutes of history (too little to train on) asks its peers
    // and starts from the fleet's models: a network, a forest, and the lineage that says so.
    fleet.join("late").await;
    fleet
        .until(Duration::from_secs(60), |f| {
            honest.iter().any(|h| f.connected("late", h))
        })
        .await
        .expect("the new node connects");
    let late = start(
        &fleet,
        "late",
        config(1),
        &series("svc-late", 300, 55.0, 90.0, 9),
        9,
    );
    let d = decision(&late, 60, |d| d.outcome == "cold_start").await;
    assert!(d.lineage.cold_start);
    assert!(d.lineage.contributors.len() >= 2, "{d:?}");
    assert!(d.lineage.contributors.iter().all(|c| c.author != "self"));
    let m = late
        .models
        .get("service")
        .expect("the fleet's model installed");
    assert!(m.mlp.is_some() && m.forest.is_some(), "{:?}", m.meta);
    // It predicts with them on its first samples.
    let mut e = augur_models::engine::ResourceEngine::new(engine.clone());
    e.set_models(Some(m.clone()));
    for s in series("svc-late", 30, 55.0, 90.0, 10) {
        let p = e.observe_raw(s.ts.0 as f64 / 1e6, &s.metrics);
        assert!(p.0.is_finite() && p.1.is_finite());
    }
}

/// Three nodes with different data of one kind (levels, noise and phases differ) train, share
/// and merge for three rounds, each round training from the merge it adopted. In every round
/// every node merges the three models of that round into the very same model (one fingerprint):
/// gossip without a server still agrees on one shared model. (How the shared model's error
/// settles over rounds is measured on SMD, docs/BENCHMARKS.md, and in `models::federated`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_data_agree_on_one_shared_model_every_round() {
    let mut fleet = SimFleet::new(
        83,
        SimConfig {
            gossip_interval: Duration::from_millis(100),
            ..SimConfig::default()
        },
    );
    let names = ["n1", "n2", "n3"];
    fleet.join_all(names).await;
    fleet.converge().await.expect("the fleet converges");
    fleet
        .until(Duration::from_secs(60), |f| {
            names
                .iter()
                .all(|x| names.iter().all(|y| x == y || f.connected(x, y)))
        })
        .await
        .expect("every pair connected");
    let nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let data = series(
                &format!("svc-{n}"),
                1_800,
                48.0 + 2.0 * i as f64,
                60.0,
                i as u64 + 11,
            );
            start(&fleet, n, config(1), &data, i as u64 + 11)
        })
        .collect();
    for round in 1..=3u64 {
        // A node whose network in use is a merge trains its next round from it, and says so.
        let bases: Vec<Option<u64>> = nodes
            .iter()
            .map(|n| {
                n.models
                    .get("service")
                    .filter(|m| {
                        m.meta
                            .federation
                            .as_ref()
                            .is_some_and(augur_models::lineage::Lineage::network_merged)
                    })
                    .map(|m| m.meta.version)
            })
            .collect();
        let trainings = nodes.iter().map(|n| n.trainer.train_now());
        for t in futures::future::join_all(trainings).await {
            assert!(
                t.expect("the trainer answers")
                    .iter()
                    .all(|o| o.trained.is_some())
            );
        }
        for (n, base) in nodes.iter().zip(&bases) {
            let own = n.models.own("service").expect("own");
            assert_eq!(own.meta.base_version, *base, "round {round}");
            let update = crate::models::own_update(&own).expect("an update");
            assert_eq!(update.base_round, base.unwrap_or(0));
        }
        // Every node merges all three of this round's models (each author's round is its
        // model's version): one shared model.
        let versions: BTreeMap<String, u64> = names
            .iter()
            .zip(&nodes)
            .map(|(name, n)| {
                let v = n.models.own("service").expect("own").meta.version;
                (fleet.peer_id(name), v)
            })
            .collect();
        let mut digests = std::collections::BTreeSet::new();
        for (name, n) in names.iter().zip(&nodes) {
            let me = fleet.peer_id(name);
            let d = decision(n, 60, |d| {
                d.lineage.contributors.len() == 3
                    && d.lineage.contributors.iter().all(|c| {
                        let author = if c.author == "self" { &me } else { &c.author };
                        versions.get(author) == Some(&c.round)
                    })
            })
            .await;
            digests.insert(d.lineage.digest.clone().expect("a fingerprint"));
        }
        assert_eq!(digests.len(), 1, "round {round}: {digests:?}");
    }
}
