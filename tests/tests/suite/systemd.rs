//! The systemd unit, checked offline (`systemd-analyze verify` and `security --offline=true`: systemd
//! cannot run as PID 1 here), and the notify protocol for real: the agent started as systemd
//! starts a `Type=notify` service, with its own notification socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use augur_tests::{AgentOptions, AgentProcess, augur_bin, path_str, systemd_analyze};
use nix::sys::signal::Signal;
use tokio::net::UnixDatagram;

const UNIT: &str = include_str!("../../../packaging/augur.service");

/// The highest exposure `systemd-analyze security` may give the unit (0 to 10; docs/BENCHMARKS.md
/// records the measured one).
const MAX_EXPOSURE: f64 = 2.0;

/// The packaged unit with `/usr/bin/augur` pointing at the binary under test (verify checks that
/// every command exists and is executable).
fn unit_for_test(dir: &Path) -> PathBuf {
    let bin = augur_bin().expect("augur binary");
    let unit = UNIT.replace("/usr/bin/augur", path_str(&bin).expect("utf-8 path"));
    let path = dir.join("augur.service");
    std::fs::write(&path, unit).expect("writes the unit");
    path
}

#[test]
fn the_unit_verifies_without_a_warning_and_is_hardened() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp");
    let unit = unit_for_test(dir.path());
    let out = std::process::Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on parse warnings, so its silence is what counts.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/usr/bin/augur validate-config",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallFilter=@system-service",
        "SystemCallArchitectures=native",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
        "RestrictNamespaces=yes",
        "CapabilityBoundingSet=\n",
        "StateDirectory=augur",
        "ConfigurationDirectory=augur",
    ] {
        assert!(UNIT.contains(key), "the unit lacks {key:?}");
    }

    let out = std::process::Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--threshold={}", (MAX_EXPOSURE * 10.0) as u32))
        .arg(&unit)
        .output()
        .expect("systemd-analyze security runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for augur.service:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        out.status.success() && exposure <= MAX_EXPOSURE,
        "exposure {exposure} (at most {MAX_EXPOSURE}): {:?}\n{text}",
        out.status
    );
}

/// Every datagram's lines, as they arrive.
async fn next_message(sock: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), sock.recv(&mut buf))
        .await
        .expect("a notification within 30 s")
        .expect("reads the socket");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Reads notifications until one has the line `want`; returns the ones before it.
async fn until(sock: &UnixDatagram, want: &str) -> Vec<String> {
    let mut before = Vec::new();
    loop {
        let m = next_message(sock).await;
        if m.lines().any(|l| l == want) {
            return before;
        }
        before.push(m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tells_systemd_it_is_ready_alive_reloading_and_stopping() {
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("binds the notification socket");
    let mut agent = AgentProcess::start(AgentOptions {
        config: "[log]\nlevel = \"info\"\n".into(),
        env: vec![
            (
                "NOTIFY_SOCKET".into(),
                path_str(&path).expect("utf-8").into(),
            ),
            // A 2 s watchdog: a ping every second.
            ("WATCHDOG_USEC".into(), "2000000".into()),
        ],
        pid_env: Some("WATCHDOG_PID".into()),
        ..Default::default()
    })
    .await
    .expect("agent starts");

    let ready = next_message(&sock).await;
    assert!(
        ready.lines().any(|l| l == "READY=1")
            && ready.contains(&format!("STATUS=ready: HTTP {}", agent.http)),
        "the first notification is READY=1 with the addresses: {ready:?}"
    );
    // Pings, about one a second, and nothing else meanwhile.
    let started = tokio::time::Instant::now();
    for _ in 0..4 {
        assert_eq!(next_message(&sock).await.trim(), "WATCHDOG=1");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(10),
        "4 pings at half of a 2 s watchdog took {took:?}"
    );

    // A reload: RELOADING=1 (with the monotonic time systemd asks for), then READY=1.
    agent.signal(Signal::SIGHUP).expect("SIGHUP");
    let reloading = until(&sock, "RELOADING=1").await;
    assert!(
        reloading.iter().all(|m| m.trim() == "WATCHDOG=1"),
        "{reloading:?}"
    );
    let between = until(&sock, "READY=1").await;
    assert!(
        between.iter().all(|m| m.trim() == "WATCHDOG=1"),
        "{between:?}"
    );

    agent.signal(Signal::SIGTERM).expect("SIGTERM");
    let before = until(&sock, "STOPPING=1").await;
    assert!(
        before.iter().all(|m| m.trim() == "WATCHDOG=1"),
        "{before:?}"
    );
    let exit = agent.wait().await.expect("exits");
    assert!(exit.success(), "{exit:?}");
    // A clean stop ends no task unexpectedly (the writer used to return as soon as its sources
    // had stopped, before its own stop, and was logged and counted as ended).
    let ended = agent.wait_log("a task ended unexpectedly").await;
    assert!(ended.is_err(), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_notification_socket_nothing_changes_and_a_foreign_watchdog_is_ignored() {
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("binds");
    // WATCHDOG_PID names another process (this test's): the watchdog is not the agent's.
    let mut agent = AgentProcess::start(AgentOptions {
        env: vec![
            (
                "NOTIFY_SOCKET".into(),
                path_str(&path).expect("utf-8").into(),
            ),
            ("WATCHDOG_USEC".into(), "1000000".into()),
            ("WATCHDOG_PID".into(), std::process::id().to_string()),
        ],
        ..Default::default()
    })
    .await
    .expect("agent starts");
    assert!(next_message(&sock).await.contains("READY=1"));
    let mut buf = [0u8; 256];
    let more = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf)).await;
    assert!(more.is_err(), "no ping for a watchdog that is not ours");
    let exit = agent.terminate().await.expect("exits");
    assert!(exit.success());
    // Without NOTIFY_SOCKET the agent starts and stops as before (every other test does so).
}
