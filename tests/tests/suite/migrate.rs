//! Migrations with real processes: three agents on loopback, each a lease voter (the signed fleet
//! document names them), run one replica of `augur-echo` behind every node's proxy. Under a
//! continuous load of 500 requests/s through the proxies, `augur migrate` moves it to another
//! node; no request fails, and every proxy ends up routing to the new instance only.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use augur_tests::{Load, LocalFleet, augur_json, path_str};
use serde_json::Value;

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn spec(port: u16, strategy: &str, standbys: u32) -> String {
    format!(
        "[service]\nname = \"echo\"\nport = {port}\nprotocol = \"http\"\nreplicas = 1\n\
         strategy = \"{strategy}\"\nstandbys = {standbys}\n\
         [service.driver]\nkind = \"process\"\ncommand = \"{}\"\nstop_grace = \"2s\"\n\
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
}

async fn setup(strategy: &str, standbys: u32) -> Setup {
    let mut fleet = LocalFleet::new().expect("fleet key");
    fleet.config = "[collect]\nhost = false\n[services]\ndrain_grace = \"2s\"\n".to_owned();
    for n in NODES {
        fleet.start(n).await.expect("starts");
    }
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
    std::fs::write(&file, spec(port, strategy, standbys)).expect("spec");
    augur_tests::apply_service(&api, &file, &cred).expect("applied");
    Setup { fleet, cred, port }
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

/// `augur migrate echo ARGS --wait` through n1; the final journal.
async fn migrate(s: &Setup, args: &[&str]) -> anyhow::Result<Value> {
    let api = s.fleet.agents["n1"].url("");
    let cred = s.cred.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut all = vec!["migrate".to_owned(), "echo".to_owned()];
        all.extend(args);
        all.extend(
            [
                "--wait",
                "--credential",
                path_str(&cred)?,
                "--api",
                &api,
                "--json",
            ]
            .map(str::to_owned),
        );
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        augur_json(&refs)
    })
    .await?
}

fn failed(outcomes: &[augur_tests::Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_under_load_loses_no_request() {
    let mut s = setup("live", 0).await;
    let (id, from, addr) = one_serving(&s.fleet, "echo served through every proxy").await;
    let port = s.port;
    let fronts: Vec<String> = NODES
        .iter()
        .map(|n| format!("http://{}:{port}/", s.fleet.proxy_ip(n)))
        .collect();
    let load = Load::start(fronts, 500);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let journal = migrate(&s, &["--strategy", "live", "--from", &from])
        .await
        .expect("the migration completes");
    let took = started.elapsed();
    let (new_id, to, new_addr) =
        one_serving(&s.fleet, "the new instance alone in every proxy").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    let failures = failed(&outcomes);
    eprintln!(
        "live: {id} on {from} -> {new_id} on {to} in {took:?}, epoch {}; {} requests, {} failed",
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
    // The old instance is gone from its node.
    assert!(
        !instances(&s.fleet)
            .await
            .iter()
            .any(|i| i.0 == id && i.1 == from),
        "the old instance stopped"
    );
}
