//! Traffic through the fleet's proxies, with real processes: three agents on loopback run two
//! replicas of `augur-echo`; every node's embedded proxy, and an HAProxy kept in step by one of
//! them, reach both. Under a continuous load of 400 requests/s, one instance is SIGKILLed: it
//! leaves every proxy, and no request fails but those that were in flight on it. Then the
//! service is scaled down: the instance that leaves drains, and its slow requests in flight
//! finish.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use augur_tests::migration_fleet::routes;
use augur_tests::{Haproxy, Load, LocalFleet, http};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn spec(port: u16, replicas: u32, protocol: &str) -> String {
    format!(
        "[service]\nname = \"echo\"\nport = {port}\nprotocol = \"{protocol}\"\nreplicas = {replicas}\n\
         [service.driver]\nkind = \"process\"\ncommand = \"{}\"\nstop_grace = \"2s\"\n\
         [service.health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         successes = 1\nfailures = 2\n",
        env!("CARGO_BIN_EXE_augur-echo")
    )
}

/// The instances of `echo` in the fleet as n1 sees them: id -> (node, addr, health).
async fn instances(fleet: &LocalFleet) -> Vec<(String, String, String, String)> {
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
            ))
        })
        .collect()
}

fn apply(fleet: &LocalFleet, file: &std::path::Path, cred: &std::path::Path) {
    augur_tests::apply_service(&fleet.agents["n1"].url(""), file, cred).expect("applied");
}

/// Waits until every node's proxies route `echo` to `n` backends.
async fn until_routed(fleet: &LocalFleet, n: usize, what: &str) {
    augur_tests::eventually(what, || async {
        routes(fleet)
            .await
            .iter()
            .all(|r| r.len() == n)
            .then_some(())
    })
    .await
    .expect(what);
}

/// Failed outcomes, split by whether they started before `at`.
fn failures(outcomes: &[augur_tests::Outcome], at: Instant) -> (Vec<String>, Vec<String>) {
    let mut before = Vec::new();
    let mut after = Vec::new();
    for o in outcomes {
        if let Err(e) = &o.result {
            if o.started < at {
                before.push(e.clone());
            } else {
                after.push(e.clone());
            }
        }
    }
    (before, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_requests_reach_every_instance_and_survive_a_kill_and_a_drain() {
    kill_and_drain("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_reach_every_instance_and_survive_a_kill_and_a_drain() {
    kill_and_drain("http").await;
}

/// The scenario of the module's documentation, with the embedded proxies in `protocol` mode
/// (HAProxy stays in TCP mode).
async fn kill_and_drain(protocol: &str) {
    let haproxy_bin = augur_tests::haproxy_bin();
    let haproxy = match &haproxy_bin {
        Some(bin) => Some(Haproxy::start(bin, "echo").await.expect("haproxy starts")),
        None => None,
    };
    let mut fleet = LocalFleet::new().expect("fleet key");
    fleet.config = "[collect]\nhost = false\n[services]\ndrain_grace = \"3s\"\n".to_owned();
    let base = fleet.config.clone();
    for n in NODES {
        // n1 keeps the HAProxy in step too.
        fleet.config = match (&haproxy, n) {
            (Some(h), "n1") => format!(
                "{base}[services.haproxy]\nsocket = \"{}\"\nbackend = \"{{service}}\"\n",
                h.socket.display()
            ),
            _ => base.clone(),
        };
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let file = fleet.dir.path().join("echo.toml");
    std::fs::write(&file, spec(port, 2, protocol)).expect("spec");
    apply(&fleet, &file, &cred);

    // Every proxy routes to both instances, and requests through each reach both.
    until_routed(&fleet, 2, "two healthy instances in every node's routes").await;
    let mut fronts: Vec<String> = NODES
        .iter()
        .map(|n| format!("http://{}:{port}/", fleet.proxy_ip(n)))
        .collect();
    if let Some(h) = &haproxy {
        augur_tests::eventually("both instances in HAProxy", || async {
            (h.ready_servers("echo").await.ok()?.len() == 2).then_some(())
        })
        .await
        .expect("HAProxy in step");
        fronts.push(format!("http://{}/", h.front));
    }
    for front in &fronts {
        let mut seen = BTreeSet::new();
        for _ in 0..8 {
            let body = http()
                .get(front)
                .send()
                .await
                .expect("request")
                .text()
                .await
                .expect("body");
            seen.insert(body.trim().to_owned());
        }
        assert_eq!(
            seen,
            BTreeSet::from(["echo-0".to_owned(), "echo-1".to_owned()]),
            "through {front}"
        );
    }

    // A continuous load through every proxy; one instance is SIGKILLed.
    let load = Load::start(fronts.clone(), 400);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = instances(&fleet).await;
    let (victim_id, victim_node, victim_addr, _) = all
        .iter()
        .find(|i| i.0 == "echo-1")
        .cloned()
        .expect("echo-1 runs");
    let pid_file = fleet
        .data_dir(&victim_node)
        .join("instances")
        .join(format!("{victim_id}.pid"));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid");
    let kill_sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    // It is dead (its sockets closed) once it is a zombie or gone; until then the kernel still
    // accepts connections for it, and requests sent on them are in flight on it.
    let dead = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rfind(')')
                .and_then(|i| stat.get(i + 2..i + 3))
                .is_some_and(|state| state == "Z" || state == "X")
        })
    };
    while !dead() {
        std::thread::sleep(Duration::from_micros(200));
    }
    let killed = Instant::now();
    let removed = augur_tests::eventually("the dead instance out of every proxy", || async {
        let embedded = routes(&fleet)
            .await
            .iter()
            .all(|r| !r.contains(&victim_addr));
        let external = match &haproxy {
            Some(h) => !h.ready_servers("echo").await.ok()?.contains(&victim_addr),
            None => true,
        };
        (embedded && external).then(|| killed.elapsed())
    })
    .await
    .expect("removed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await;
    // In flight on it: sent before it died, not answered before the signal (the share of them
    // that went to it, through any proxy, may fail).
    let in_flight = outcomes
        .iter()
        .filter(|o| o.started < killed && o.ended > kill_sent)
        .count();
    let (before, after) = failures(&outcomes, killed);
    eprintln!(
        "{protocol} kill: {} requests, {in_flight} in flight at the kill, {} failed of those started before it, \
         {} failed after it; removed from every proxy in {removed:?}",
        outcomes.len(),
        before.len(),
        after.len()
    );
    assert!(
        outcomes.len() >= 400 * 4,
        "the load ran at 400/s: {}",
        outcomes.len()
    );
    assert!(
        before.len() <= in_flight,
        "only requests in flight may fail: {before:?}"
    );
    assert!(after.is_empty(), "failed after the kill: {after:?}");
    assert!(
        removed < Duration::from_secs(5),
        "removed after {removed:?}"
    );

    // The killed instance is restarted by its driver and routed again.
    until_routed(&fleet, 2, "echo-1 back in every proxy").await;

    // Scale down under load: echo-1 drains (no new requests) and its slow requests finish.
    let load = Load::start(fronts.clone(), 400);
    let slow: Vec<_> = (0..12)
        .map(|i| {
            let url = format!("{}slow/1500", fronts[i % fronts.len()]);
            tokio::spawn(async move { http().get(url).send().await?.text().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&file, spec(port, 1, protocol)).expect("spec");
    let scaled = Instant::now();
    apply(&fleet, &file, &cred);
    let mut answered = BTreeSet::new();
    for s in slow {
        let body = s.await.expect("joined").expect("a slow request finished");
        answered.insert(body.trim().to_owned());
    }
    assert_eq!(
        answered,
        BTreeSet::from(["echo-0".to_owned(), "echo-1".to_owned()]),
        "slow requests were in flight on both"
    );
    until_routed(&fleet, 1, "one instance left in every proxy").await;
    augur_tests::eventually("echo-1 stopped after its drain", || async {
        (instances(&fleet).await.len() == 1).then_some(())
    })
    .await
    .expect("stopped");
    let outcomes = load.finish().await;
    let (before, after) = failures(&outcomes, scaled);
    eprintln!(
        "{protocol} drain: {} requests, {} failed",
        outcomes.len(),
        before.len() + after.len()
    );
    assert!(
        before.is_empty() && after.is_empty(),
        "no request fails in a drain: {before:?} {after:?}"
    );
}
