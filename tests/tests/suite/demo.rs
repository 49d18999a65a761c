//! `augur demo` with real processes: each fault runs as the user would run it (`augur demo
//! --fault KIND --json`, a fleet of three agents on loopback, the sample service under load), and
//! its JSON is checked: every predictable fault pre-empted with no request failed, a sudden crash
//! served again by another instance within 5 s, a healthy run left alone. Runs one at a time
//! (each is a fleet of its own), at speed 1.5 (the fault's course 60 s).

use serde_json::Value;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn demo(fault: &str, extra: &[&str]) -> Value {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut args: Vec<String> = ["demo", "--fault", fault, "--json", "--speed", "1.5"]
        .map(str::to_owned)
        .to_vec();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let v = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        augur_tests::augur_json(&refs)
    })
    .await
    .expect("joined")
    .expect("augur demo runs");
    eprintln!("{fault}: {v}");
    assert_eq!(v["fault"], fault);
    v
}

fn secs(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing: {v}"))
}

/// A predictable fault: predicted, then moved (started and done) before the failure, by a peer,
/// to another node, with no request lost.
async fn pre_empted(fault: &str) {
    let v = demo(fault, &[]).await;
    assert_eq!(v["outcome"], "pre-empted", "{v}");
    assert_eq!(v["requests_failed"], 0, "{v}");
    assert!(v["requests_total"].as_u64().unwrap_or(0) > 1000, "{v}");
    let (predicted, started, done, failure) = (
        secs(&v, "predicted_at_s"),
        secs(&v, "migration_started_s"),
        secs(&v, "migration_done_s"),
        secs(&v, "failure_at_s"),
    );
    assert!(
        predicted <= started && started <= done && done < failure,
        "{v}"
    );
    assert!(secs(&v, "lead_time_s") > 0.0, "{v}");
    assert_ne!(
        v["coordinator"], v["from"],
        "the failing node does not coordinate: {v}"
    );
    assert_ne!(v["to"], v["from"], "{v}");
    assert_eq!(v["migrations"], 1, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_memory_leak_is_pre_empted() {
    pre_empted("memory_leak").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_disk_fill_is_pre_empted() {
    pre_empted("disk_fill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_error_ramp_is_pre_empted() {
    pre_empted("error_ramp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_latency_creep_is_pre_empted() {
    pre_empted("latency_creep").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_cpu_hog_is_pre_empted() {
    pre_empted("cpu_hog").await;
}

/// Not predictable: the node dies; the fleet declares it dead, elects a peer, which promotes the
/// warm standby under a lease; the load is served again within 5 s of the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sudden_crash_is_served_again_within_five_seconds() {
    let v = demo("sudden_crash", &[]).await;
    assert_eq!(v["outcome"], "reactive", "{v}");
    assert!(v["predicted_at_s"].is_null(), "nothing foretold it: {v}");
    let again = secs(&v, "served_again_after_s");
    assert!(again <= 5.0, "served again after {again} s: {v}");
    assert!(
        secs(&v, "migration_done_s") > secs(&v, "failure_at_s"),
        "{v}"
    );
    assert_ne!(v["coordinator"], v["from"], "{v}");
    assert_eq!(v["strategy"], "warm_standby");
}

/// A healthy run: nothing predicted, nothing moved, nothing failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_none_moves_nothing() {
    let v = demo("none", &["--duration", "30s"]).await;
    assert_eq!(v["outcome"], "none", "{v}");
    assert_eq!(v["migrations"], 0, "{v}");
    assert_eq!(v["requests_failed"], 0, "{v}");
    assert!(v["migration_started_s"].is_null(), "{v}");
}
