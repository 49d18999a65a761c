//! `augur doctor` against a real fleet on loopback: a healthy node's checks all pass (its token,
//! its seed over UDP and QUIC, its clock against its peers, its ports held by itself), and each
//! problem planted on purpose is found and explained.

use std::process::Command;

use augur_tests::{LocalFleet, augur_bin, augur_json, path_str};
use serde_json::Value;

/// Runs `augur doctor --json` with `args`; returns its exit success and report.
fn doctor(args: &[String]) -> (bool, Value) {
    let out = Command::new(augur_bin().expect("binary"))
        .arg("doctor")
        .arg("--json")
        .args(args)
        .env_remove("AUGUR_BIN")
        .output()
        .expect("doctor runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor's JSON: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

/// The checks named `prefix...`, as (name, verdict, detail, fix).
fn checks(report: &Value, prefix: &str) -> Vec<(String, String, String, String)> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["check"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("check"), s("verdict"), s("detail"), s("fix"))
        })
        .collect()
}

fn verdict(report: &Value, name: &str) -> String {
    let c = checks(report, name);
    assert_eq!(c.len(), 1, "one check {name}: {report:#}");
    c[0].1.clone()
}

fn token(fleet: &LocalFleet, data_dir: &std::path::Path, ttl: &str) -> String {
    augur_json(&[
        "fleet",
        "token",
        "--fleet-key",
        path_str(&fleet.fleet_key_path()).expect("utf-8"),
        "--data-dir",
        path_str(data_dir).expect("utf-8"),
        "--ttl",
        ttl,
        "--json",
    ])
    .expect("token")["join_token"]
        .as_str()
        .expect("join_token")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_healthy_node_and_explains_each_planted_problem() {
    let mut fleet = LocalFleet::new().expect("fleet");
    fleet.form(&["n1", "n2", "n3"]).await.expect("fleet forms");
    // The clock travels over libp2p.
    fleet.until_connected().await.expect("libp2p connections");
    let n2 = &fleet.agents["n2"];
    let (g1, _) = fleet.ports("n1").expect("n1 ports");
    let (g2, p2) = fleet.ports("n2").expect("n2 ports");
    // n2's own flags, as it was started.
    let base = |token: &str, seed: &str, http: String| -> Vec<String> {
        let mut a = vec![
            "--config".to_owned(),
            path_str(&n2.config_file).expect("utf-8").to_owned(),
            "--data-dir".to_owned(),
            path_str(&n2.data_dir).expect("utf-8").to_owned(),
            "--http-addr".to_owned(),
            http,
            "--grpc-addr".to_owned(),
            n2.grpc.to_string(),
            "--gossip-addr".to_owned(),
            format!("127.0.0.1:{g2}"),
            "--p2p-addr".to_owned(),
            format!("127.0.0.1:{p2}"),
            "--join-token".to_owned(),
            token.to_owned(),
            "--seed".to_owned(),
            seed.to_owned(),
        ];
        for k in fleet.fleet_public_key.split(',') {
            a.push("--fleet-key".to_owned());
            a.push(k.to_owned());
        }
        a
    };
    let good = token(&fleet, &n2.data_dir, "365days");
    let seed = format!("127.0.0.1:{g1}");

    // Healthy: nothing fails, and the fleet's checks say why they pass.
    let (ok, r) = doctor(&base(&good, &seed, n2.http.to_string()));
    assert!(ok, "{r:#}");
    assert_eq!(r["healthy"], true);
    for name in [
        "configuration",
        "data directory",
        "agent",
        "fleet keys",
        "join token",
        "clock",
    ] {
        assert_eq!(verdict(&r, name), "ok", "{name}: {r:#}");
    }
    for (name, v, detail, _) in checks(&r, "port ") {
        assert_eq!(v, "ok", "{name}: {detail}");
        assert!(detail.contains("held by this agent"), "{name}: {detail}");
    }
    assert_eq!(checks(&r, "port ").len(), 4, "HTTP, gRPC, gossip, QUIC");
    let s = checks(&r, "seed ");
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(
        s.iter().all(|(_, v, d, _)| v == "ok" && d.contains("n1")),
        "{s:?}"
    );
    let clock = &checks(&r, "clock")[0].2;
    assert!(clock.starts_with("2 peer(s) measured"), "{clock}");

    // Planted problems: a token issued to another node that expires tomorrow would be two; one
    // at a time. A token near its expiry: a warning, not a failure.
    let soon = token(&fleet, &n2.data_dir, "1day");
    let (ok, r) = doctor(&base(&soon, &seed, n2.http.to_string()));
    assert!(ok, "a warning is not a failure: {r:#}");
    let t = &checks(&r, "join token")[0];
    assert!(t.1 == "warn" && t.2.contains("but expires in "), "{t:?}");
    assert!(t.3.contains("augur fleet token --peer-id"), "{t:?}");

    // Another node's token.
    let other = tempfile::tempdir().expect("temp");
    let foreign = token(&fleet, other.path(), "365days");
    let (ok, r) = doctor(&base(&foreign, &seed, n2.http.to_string()));
    assert!(!ok, "a failed check exits 1");
    let t = &checks(&r, "join token")[0];
    assert!(t.1 == "fail" && t.2.contains("issued to"), "{t:?}");

    // A seed where nothing runs: its gossip never arrives.
    let quiet = std::net::UdpSocket::bind("127.0.0.1:0").expect("binds");
    let nowhere = quiet.local_addr().expect("addr").to_string();
    let (ok, r) = doctor(&base(&good, &nowhere, n2.http.to_string()));
    assert!(!ok);
    let s = checks(&r, "seed ");
    assert!(
        s.len() == 1 && s[0].1 == "fail" && s[0].3.contains("UDP port"),
        "{s:?}"
    );

    // The HTTP port held by another process (the agent is then looked for there, and not found).
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let taken = squatter.local_addr().expect("addr").to_string();
    let (ok, r) = doctor(&base(&good, &seed, taken.clone()));
    assert!(!ok);
    let p = &checks(&r, "port api.http_addr")[0];
    assert!(
        p.1 == "fail" && p.2.contains("not by this agent") && p.3.contains("ss -tlnp"),
        "{p:?}"
    );
    assert_eq!(verdict(&r, "agent"), "warn");
    assert_eq!(verdict(&r, "clock"), "skip", "no agent to measure it");

    // A configuration the agent would refuse: the first check fails and says which field.
    let bad = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(bad.path(), "[api]\nmax_connections = \"many\"\n").expect("writes");
    let (ok, r) = doctor(&[
        "--config".to_owned(),
        path_str(bad.path()).expect("utf-8").to_owned(),
    ]);
    assert!(!ok);
    let c = &checks(&r, "configuration")[0];
    assert!(c.1 == "fail" && c.2.contains("max_connections"), "{c:?}");
    drop(squatter);
}
