//! The `augur` binary's offline commands (no agent running). Building this target also builds the
//! binary that the workspace's real-process suite (augur-tests) starts.

use std::process::Command;

fn augur() -> Command {
    Command::new(env!("CARGO_BIN_EXE_augur"))
}

#[test]
fn validate_config_accepts_the_packaged_file() {
    let out = augur()
        .args([
            "validate-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/augur.toml"),
            "--json",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["api"]["http_addr"], "127.0.0.1:7070");
}

#[test]
fn validate_config_names_the_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[history]\nmax_agee = \"1d\"\n").expect("write");
    let out = augur()
        .arg("validate-config")
        .arg(&file)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_agee"), "{err}");
}

#[test]
fn status_without_an_agent_says_what_to_do() {
    let out = augur()
        .args(["status", "--api", "http://127.0.0.1:9"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is it running"), "{err}");
}

#[test]
fn agent_refuses_an_unwritable_data_dir() {
    let out = augur()
        .args([
            "agent",
            "--data-dir",
            "/proc/augur-cannot-exist",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data-dir"), "{err}");
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::io::Read;
    let mut child = augur()
        .args([
            "eval",
            "failures",
            "--per-scenario",
            "1",
            "--seconds",
            "600",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    drop(child.stdout.take());
    let status = child.wait().expect("exits");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("reads");
    assert!(!err.contains("panicked"), "{err}");
    assert!(matches!(status.code(), Some(0) | Some(141)), "{status:?}");
}
