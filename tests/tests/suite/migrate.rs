//! Migrations with real processes: three agents on loopback, each a lease voter (the signed fleet
//! document names them), run one replica of `augur-echo` behind every node's proxy. Under a
//! continuous load of 500 requests/s through the proxies:
//! - `augur migrate` moves it with each strategy (`live`, `warm_standby`, `blue_green`): no
//!   request fails, and every proxy ends up routing to the new instance only;
//! - a migration cancelled at each step rolls back: the old instance serves again, no request
//!   fails;
//! - the coordinating agent is SIGKILLed in the middle of each strategy and restarted: it resumes
//!   from its journal (rolls back before `retire`, finishes from it), and the service serves.
//!   No request through the other nodes' proxies fails.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use augur_tests::{Haproxy, Load, LocalFleet, augur_json, path_str};
use serde_json::Value;

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// `ready_after_ms`: how long a new instance fails its health checks (a slow start).
fn spec(port: u16, strategy: &str, standbys: u32, ready_after_ms: u64) -> String {
    format!(
        "[service]\nname = \"echo\"\nport = {port}\nprotocol = \"http\"\nreplicas = 1\n\
         strategy = \"{strategy}\"\nstandbys = {standbys}\n\
         [service.driver]\nkind = \"process\"\ncommand = \"{}\"\nstop_grace = \"2s\"\n\
         env = {{ AUGUR_ECHO_READY_AFTER_MS = \"{ready_after_ms}\" }}\n\
         [service.health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         successes = 1\nfailures = 2\n",
        env!("CARGO_BIN_EXE_augur-echo")
    )
}

/// A running fleet with leases on and the service applied.
struct Setup {
    fleet: LocalFleet,
    cred: PathBuf,
    port: u16,
    /// An HAProxy n1 keeps in step, when asked for (and installed).
    haproxy: Option<Haproxy>,
}

async fn setup(strategy: &str, standbys: u32, ready_after_ms: u64) -> Setup {
    setup_with(strategy, standbys, ready_after_ms, false).await
}

async fn setup_with(strategy: &str, standbys: u32, ready_after_ms: u64, haproxy: bool) -> Setup {
    let haproxy = match augur_tests::haproxy_bin().filter(|_| haproxy) {
        Some(bin) => Some(Haproxy::start(&bin, "echo").await.expect("haproxy starts")),
        None => None,
    };
    let mut fleet = LocalFleet::new().expect("fleet key");
    let base = "[collect]\nhost = false\n[services]\ndrain_grace = \"2s\"\n".to_owned();
    for n in NODES {
        fleet.config = match (&haproxy, n) {
            (Some(h), "n1") => format!(
                "{base}[services.haproxy]\nsocket = \"{}\"\nbackend = \"{{service}}\"\n",
                h.socket.display()
            ),
            _ => base.clone(),
        };
        fleet.start(n).await.expect("starts");
    }
    fleet.config = base;
    for n in NODES {
        fleet
            .until_all_see(n, "alive", Duration::from_secs(30))
            .await
            .expect("the fleet forms");
    }
    let cred = fleet.dir.path().join("operator.cred");
    augur_tests::operator_credential(&fleet.fleet_key_path(), &cred).expect("operator credential");
    // Every node votes; a lease lasts 6 s (renewed at half-time), a move holds its service
    // down for 1 s.
    let mut voters = Vec::new();
    for n in NODES {
        let status = fleet.agents[n]
            .get_json("/v1/status")
            .await
            .expect("status");
        voters.push(format!(
            "\"{}\"",
            status["peer_id"].as_str().expect("peer id")
        ));
    }
    let doc = fleet.dir.path().join("fleet.toml");
    std::fs::write(
        &doc,
        format!(
            "[leases]\nvoters = [{}]\nhold_down = \"1s\"\nduration = \"6s\"\n",
            voters.join(", ")
        ),
    )
    .expect("fleet document");
    let api = fleet.agents["n1"].url("");
    augur_json(&[
        "fleet",
        "apply",
        path_str(&doc).expect("path"),
        "--credential",
        path_str(&cred).expect("path"),
        "--api",
        &api,
        "--json",
    ])
    .expect("fleet document applied");
    for n in NODES {
        augur_tests::eventually("the fleet document on every node", || async {
            let v = fleet.agents[n].get_json("/v1/leases").await.ok()?;
            (v["config_version"] == 1 && v["voter"] == true).then_some(())
        })
        .await
        .expect("leases configured");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let file = fleet.dir.path().join("echo.toml");
    std::fs::write(&file, spec(port, strategy, standbys, ready_after_ms)).expect("spec");
    augur_tests::apply_service(&api, &file, &cred).expect("applied");
    Setup {
        fleet,
        cred,
        port,
        haproxy,
    }
}

/// The backends each node's proxies route `echo` to.
async fn routes(fleet: &LocalFleet) -> Vec<BTreeSet<String>> {
    let mut out = Vec::new();
    for n in NODES {
        let v = fleet.agents[n]
            .get_json("/v1/services")
            .await
            .unwrap_or_default();
        out.push(
            v["routes"]["services"]["echo"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default(),
        );
    }
    out
}

/// `echo`'s instances as n1 sees them: (id, node, addr, health, role).
async fn instances(fleet: &LocalFleet) -> Vec<(String, String, String, String, String)> {
    let v = fleet.agents["n1"]
        .get_json("/v1/services")
        .await
        .unwrap_or_default();
    v["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["service"] == "echo")
        .filter_map(|i| {
            Some((
                i["id"].as_str()?.to_owned(),
                i["node"].as_str()?.to_owned(),
                i["addr"].as_str()?.to_owned(),
                i["health"].as_str()?.to_owned(),
                i["role"].as_str().unwrap_or("serving").to_owned(),
            ))
        })
        .collect()
}

/// Waits until every proxy routes to exactly one healthy serving instance; returns it.
async fn one_serving(fleet: &LocalFleet, what: &str) -> (String, String, String) {
    augur_tests::eventually(what, || async {
        let serving: Vec<_> = instances(fleet)
            .await
            .into_iter()
            .filter(|i| i.4 == "serving" && i.3 == "healthy")
            .collect();
        let [(id, node, addr, _, _)] = serving.as_slice() else {
            return None;
        };
        let r = routes(fleet).await;
        r.iter()
            .all(|r| r.len() == 1 && r.contains(addr))
            .then(|| (id.clone(), node.clone(), addr.clone()))
    })
    .await
    .expect(what)
}

/// `augur ARGS --credential C --api (coordinator's) --json`, off the runtime's threads.
async fn augur(s: &Setup, coordinator: &str, args: Vec<String>) -> anyhow::Result<Value> {
    let api = s.fleet.agents[coordinator].url("");
    let cred = s.cred.clone();
    tokio::task::spawn_blocking(move || {
        let mut all = args;
        all.extend(["--credential", path_str(&cred)?, "--api", &api, "--json"].map(str::to_owned));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        augur_json(&refs)
    })
    .await?
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// `augur migrate echo ARGS --wait` through `coordinator`; the final journal.
async fn migrate(s: &Setup, coordinator: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = owned(&["migrate", "echo"]);
    all.extend(owned(args));
    all.push("--wait".to_owned());
    augur(s, coordinator, all).await
}

/// Starts a migration through `coordinator` (answered once its lease is granted); its id.
async fn start_migration(s: &Setup, coordinator: &str, args: &[&str]) -> String {
    let mut all = owned(&["migrate", "echo"]);
    all.extend(owned(args));
    let j = augur(s, coordinator, all).await.expect("migration started");
    j["id"].as_str().expect("an id").to_owned()
}

/// The migration's journal on `coordinator`, once `f` holds of it.
async fn until_journal(
    fleet: &LocalFleet,
    coordinator: &str,
    id: &str,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/v1/migrations/{id}");
    augur_tests::eventually(what, || async {
        let j = fleet.agents.get(coordinator)?.get_json(&path).await.ok()?;
        f(&j).then_some(j)
    })
    .await
    .expect(what)
}

fn at_step(j: &Value, step: &str) -> bool {
    j["record"]["phase"]["phase"] == "forward" && j["record"]["phase"]["step"] == step
}

fn finished(j: &Value) -> bool {
    j["record"]["phase"]["phase"] == "finished"
}

/// The node (of the three) that runs no instance of `echo`.
async fn free_node(fleet: &LocalFleet) -> String {
    let busy: BTreeSet<String> = instances(fleet).await.into_iter().map(|i| i.1).collect();
    NODES
        .iter()
        .find(|n| !busy.contains(**n))
        .expect("a node without echo")
        .to_string()
}

fn fronts(s: &mut Setup, nodes: &[&str]) -> Vec<String> {
    let port = s.port;
    nodes
        .iter()
        .map(|n| format!("http://{}:{port}/", s.fleet.proxy_ip(n)))
        .collect()
}

fn failed(outcomes: &[augur_tests::Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().cloned())
        .collect()
}

/// Moves `echo` with `strategy` under load through every proxy; checks no request failed and the
/// new instance alone is routed to. Returns (journal, time taken).
async fn move_under_load(s: &mut Setup, strategy: &str, extra: &[&str]) -> (Value, Duration) {
    let (id, from, addr) = one_serving(&s.fleet, "echo served through every proxy").await;
    let mut targets = fronts(s, &NODES);
    if let Some(h) = &s.haproxy {
        let want = addr.clone();
        augur_tests::eventually("echo in HAProxy", || async {
            (h.ready_servers("echo").await.ok()? == [want.clone()]).then_some(())
        })
        .await
        .expect("HAProxy in step");
        targets.push(format!("http://{}/", h.front));
    }
    let load = Load::start(targets, 500);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let mut args = vec!["--strategy", strategy, "--from", from.as_str()];
    args.extend(extra);
    let journal = migrate(s, "n1", &args)
        .await
        .expect("the migration completes");
    let took = started.elapsed();
    let (new_id, to, new_addr) =
        one_serving(&s.fleet, "the new instance alone in every proxy").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    let failures = failed(&outcomes);
    eprintln!(
        "{strategy}: {id} on {from} -> {new_id} on {to} in {took:?}, epoch {}; {} requests, {} failed",
        journal["record"]["epoch"],
        outcomes.len(),
        failures.len()
    );
    assert_eq!(
        journal["record"]["phase"]["outcome"], "completed",
        "{journal}"
    );
    assert_ne!(to, from, "moved to another node");
    assert_ne!(new_addr, addr);
    assert!(
        journal["record"]["epoch"].as_u64().unwrap_or(0) > 0,
        "under a lease"
    );
    assert!(
        outcomes.len() >= 500 * 4,
        "the load ran at 500/s: {}",
        outcomes.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        !instances(&s.fleet)
            .await
            .iter()
            .any(|i| i.0 == id && i.1 == from && i.4 == "serving"),
        "the old instance no longer serves"
    );
    (journal, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_under_load_loses_no_request() {
    // With an HAProxy in step too (n1 drives it), when it is installed.
    let mut s = setup_with("live", 0, 0, true).await;
    move_under_load(&mut s, "live", &[]).await;
    // The old instance is gone from every node.
    let left: Vec<_> = instances(&s.fleet).await;
    assert_eq!(left.len(), 1, "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_switchover_under_load_loses_no_request_and_a_new_standby_follows() {
    let mut s = setup("warm_standby", 1, 0).await;
    let standby = augur_tests::eventually("a healthy standby", || async {
        instances(&s.fleet)
            .await
            .into_iter()
            .find(|i| i.4 == "standby" && i.3 == "healthy")
    })
    .await
    .expect("standby");
    let (_, _) = move_under_load(&mut s, "warm_standby", &[]).await;
    let (serving_id, serving_node, _) = one_serving(&s.fleet, "the former standby serves").await;
    assert_eq!(
        (serving_id.as_str(), serving_node.as_str()),
        (standby.0.as_str(), standby.1.as_str())
    );
    augur_tests::eventually("a new standby on another node", || async {
        instances(&s.fleet)
            .await
            .into_iter()
            .find(|i| i.4 == "standby" && i.3 == "healthy" && i.1 != serving_node)
    })
    .await
    .expect("a new standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_switch_under_load_loses_no_request() {
    let mut s = setup("blue_green", 0, 0).await;
    let (journal, took) =
        move_under_load(&mut s, "blue_green", &["--soak", "2s", "--window", "3s"]).await;
    assert!(
        took >= Duration::from_secs(5),
        "soaked and kept blue for its window: {took:?}"
    );
    let steps: Vec<&str> = journal["record"]["log"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["step"].as_str())
        .collect();
    assert!(steps.contains(&"soak"), "{steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_cancelled_at_each_step_rolls_back_and_loses_no_request() {
    // New instances take 1.5 s to pass their checks, so the surge can be caught.
    let mut s = setup("live", 0, 1500).await;
    let (_, from, addr) = one_serving(&s.fleet, "echo served through every proxy").await;
    let load = Load::start(fronts(&mut s, &NODES), 500);
    for step in ["surge", "shift", "retire"] {
        let id = start_migration(&s, "n1", &["--strategy", "live", "--from", &from]).await;
        until_journal(&s.fleet, "n1", &id, &format!("{id} at {step}"), |j| {
            at_step(j, step)
        })
        .await;
        augur(&s, "n1", owned(&["migrations", &id, "--cancel"]))
            .await
            .expect("cancelled");
        let j = until_journal(&s.fleet, "n1", &id, "rolled back", finished).await;
        assert_eq!(j["record"]["phase"]["outcome"], "rolled_back", "{j}");
        assert_eq!(
            j["record"]["phase"]["step"], step,
            "rolled back from {step}: {j}"
        );
        let (_, node, serving) = one_serving(&s.fleet, "the old instance alone serves again").await;
        assert_eq!(
            (node.as_str(), serving.as_str()),
            (from.as_str(), addr.as_str()),
            "after {step}"
        );
        augur_tests::eventually("the new instance gone", || async {
            (instances(&s.fleet).await.len() == 1).then_some(())
        })
        .await
        .expect("dropped");
    }
    let outcomes = load.finish().await;
    let failures = failed(&outcomes);
    eprintln!(
        "cancelled at each step: {} requests, {} failed",
        outcomes.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
}

/// SIGKILLs the coordinator (a node running no `echo`) when the migration reaches `step`,
/// restarts it, and checks the migration ends as its journal says it must, with the service
/// serving and no request through the other proxies failing.
async fn kill_coordinator_at(strategy: &str, standbys: u32, step: &str, extra: &[&str]) {
    let mut s = setup(strategy, standbys, 0).await;
    let (_, from, old_addr) = one_serving(&s.fleet, "echo served through every proxy").await;
    if standbys > 0 {
        augur_tests::eventually("a healthy standby", || async {
            instances(&s.fleet)
                .await
                .into_iter()
                .find(|i| i.4 == "standby" && i.3 == "healthy")
        })
        .await
        .expect("standby");
    }
    let coordinator = free_node(&s.fleet).await;
    let others: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| **n != coordinator)
        .collect();
    let load = Load::start(fronts(&mut s, &others), 500);
    let mut args = vec!["--strategy", strategy, "--from", from.as_str()];
    args.extend(extra);
    let id = start_migration(&s, &coordinator, &args).await;
    until_journal(
        &s.fleet,
        &coordinator,
        &id,
        &format!("{id} at {step}"),
        |j| at_step(j, step),
    )
    .await;
    let t0 = Instant::now();
    s.fleet.kill(&coordinator).await.expect("killed");
    s.fleet.start(&coordinator).await.expect("restarted");
    let restarted = t0.elapsed();
    let j = until_journal(
        &s.fleet,
        &coordinator,
        &id,
        "resumed and finished",
        finished,
    )
    .await;
    let want = if matches!(step, "retire" | "stop") {
        "completed"
    } else {
        "rolled_back"
    };
    assert_eq!(
        j["record"]["phase"]["outcome"], want,
        "{strategy} killed at {step}: {j}"
    );
    let resumed = j["record"]["log"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["step"] == "resume");
    assert!(resumed, "resumed from the journal: {j}");
    let (_, _, addr) = one_serving(&s.fleet, "echo serves after the restart").await;
    if want == "rolled_back" {
        assert_eq!(addr, old_addr, "the old instance serves again");
    } else {
        assert_ne!(addr, old_addr, "the new instance serves");
    }
    let outcomes = load.finish().await;
    let failures = failed(&outcomes);
    // When the failures were, after the kill (none expected).
    let when: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.started.saturating_duration_since(t0).as_secs_f64())
        .collect();
    eprintln!(
        "{strategy}, coordinator killed at {step}: {want}; {} requests, {} failed (from {:?} to {:?} s after the kill; restarted after {restarted:?})",
        outcomes.len(),
        failures.len(),
        when.first(),
        when.last(),
    );
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_whose_coordinator_is_killed_mid_way_resumes_from_its_journal() {
    kill_coordinator_at("live", 0, "shift", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_killed_at_retire_finishes_after_the_restart() {
    kill_coordinator_at("live", 0, "retire", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_switchover_whose_coordinator_is_killed_resumes() {
    kill_coordinator_at("warm_standby", 1, "shift", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_switch_whose_coordinator_is_killed_in_its_soak_rolls_back() {
    kill_coordinator_at("blue_green", 0, "soak", &["--soak", "5s", "--window", "2s"]).await;
}
