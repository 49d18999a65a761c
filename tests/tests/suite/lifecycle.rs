//! Starting with no configuration, the CLI against a running agent, SIGTERM and SIGHUP.

use std::process::Command;

use augur_tests::{AgentOptions, AgentProcess, augur_bin, eventually};
use serde_json::Value;

fn cli(agent: &AgentProcess, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(augur_bin().expect("binary"))
        .args(args)
        .arg("--api")
        .arg(agent.url(""))
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_cli_and_clean_shutdown() {
    // No configuration file: embedded defaults, host collection every second.
    let mut agent = AgentProcess::start(AgentOptions {
        node_name: Some("cli-host".into()),
        ..Default::default()
    })
    .await
    .expect("agent starts without a config file");
    eventually("a host sample", || async {
        let v: Value = agent.get_json("/v1/resources").await.ok()?;
        (v["resources"][0]["resource_id"] == "cli-host").then_some(())
    })
    .await
    .expect("host collected");

    let (ok, out, err) = cli(&agent, &["status", "--json"]);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(status["node_name"], "cli-host");
    let (ok, out, _) = cli(&agent, &["status"]);
    assert!(ok && out.contains("peer_id"), "{out}");

    let (ok, out, err) = cli(&agent, &["resources", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("resources JSON");
    assert_eq!(v["resources"][0]["resource_type"], "host");

    let (ok, out, err) = cli(&agent, &["telemetry", "cli-host", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("telemetry JSON");
    let rec = &v["records"][0]["metrics"];
    for m in [
        "cpu_util",
        "mem_used_ratio",
        "load_1",
        "disk_used_ratio_max",
        "net_rx_bps",
        "process_count",
        "agent_rss_bytes",
    ] {
        assert!(rec.get(m).is_some(), "{m} missing from {rec}");
    }
    let (ok, out, _) = cli(&agent, &["telemetry", "cli-host"]);
    assert!(ok && out.contains("cpu_util="), "{out}");
    let (ok, _, err) = cli(&agent, &["telemetry", "no-such-resource"]);
    assert!(!ok && err.contains("unknown resource"), "{err}");

    let exit = agent.terminate().await.expect("exits");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_what_it_can_and_names_the_rest() {
    let mut agent = AgentProcess::start(AgentOptions {
        config: "[collect]\nhost = false\n[log]\nlevel = \"info\"\n".into(),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let file = agent.config_file.clone();

    std::fs::write(
        &file,
        "[collect]\nhost = false\n[history]\nmax_age = \"2d\"\n",
    )
    .expect("write");
    agent.signal(nix::sys::signal::Signal::SIGHUP).expect("hup");
    agent
        .wait_log("configuration reloaded")
        .await
        .expect("reloaded");

    std::fs::write(&file, "[collect]\nhost = false\n[api]\nhttp_adr = \"x\"\n").expect("write");
    agent.signal(nix::sys::signal::Signal::SIGHUP).expect("hup");
    let refused = agent.wait_log("reload refused").await.expect("refused");
    assert!(
        refused["error"]
            .as_str()
            .expect("error")
            .contains("http_adr"),
        "{refused}"
    );

    std::fs::write(&file, "[collect]\nhost = true\n").expect("write");
    agent.signal(nix::sys::signal::Signal::SIGHUP).expect("hup");
    let warn = agent
        .wait_log("only after a restart")
        .await
        .expect("warned");
    assert!(
        warn["settings"]
            .as_str()
            .expect("settings")
            .contains("collect"),
        "{warn}"
    );

    let metrics = agent.get_text("/metrics").await.expect("GET");
    assert!(
        metrics.contains("augur_config_reloads_total{outcome=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("augur_config_reloads_total{outcome=\"error\"} 1"),
        "{metrics}"
    );
    assert!(agent.terminate().await.expect("exits").success());
}
