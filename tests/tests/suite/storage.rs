//! A full disk (issue 10, finding 8), on a real one: a small tmpfs mounted for the test. While
//! writes fail the agent refuses pushes with 507 and says why, counts every sample it drops, and
//! reports it in `/healthz`; once space is back it resumes by itself, and nothing it acknowledged is
//! lost (before, redb latched its first ENOSPC and nothing was written again until a restart).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use augur_tests::{AgentOptions, AgentProcess, eventually, http, json_lines, metric, now_us};
use serde_json::Value;

/// A tmpfs of a fixed size, unmounted on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    /// `None` when not root (mounting needs it); CI runs as root.
    fn mount(size: &str) -> Option<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk");
        std::fs::create_dir_all(&path).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs")
            .success();
        assert!(ok, "root could not mount a tmpfs at {}", path.display());
        Some(Self { _dir: dir, path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes a file until the file system is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let small = vec![0u8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

async fn push(agent: &AgentProcess, resource: &str, start: i64, n: usize) -> (u16, Value) {
    let resp = http()
        .post(agent.url("/v1/telemetry"))
        .body(json_lines(resource, start, n))
        .send()
        .await
        .expect("push");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn count(agent: &AgentProcess, id: &str) -> Option<u64> {
    let v: Value = agent
        .get_json(&format!(
            "/v1/resources/{id}/telemetry?since=2h&limit=100000"
        ))
        .await
        .ok()?;
    Some(v["records"].as_array()?.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_507_counts_drops_and_recovers_by_itself() {
    let Some(disk) = Tmpfs::mount("32m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data_dir = disk.path.join("data");
    let config = "node_name = \"full-host\"\n[resource_types.host]\ninterval = \"100ms\"\n";
    let mut agent = AgentProcess::start(AgentOptions {
        data_dir: Some(data_dir.clone()),
        config: config.to_owned(),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let start = now_us() - 3_000_000_000;
    for batch in 0..10 {
        let (status, body) = push(&agent, "svc-1", start + batch * 1_000_000, 500).await;
        assert_eq!(status, 200, "{body}");
    }

    // The disk fills up. Pushes go on until the store cannot grow: each one either is durable
    // (200) or is refused with 507 and a reason.
    fill(&disk.path.join("filler"));
    let mut acked = 0u64;
    let mut refused: Option<Value> = None;
    for batch in 0..400 {
        let (status, body) = push(&agent, "svc-2", start + batch * 1_000_000, 500).await;
        match status {
            200 => acked += 500,
            507 => {
                refused = Some(body);
                break;
            }
            other => panic!("push answered {other}: {body}"),
        }
    }
    let refused = refused.expect("a push is refused once the disk is full");
    let why = refused["error"].as_str().unwrap_or_default();
    assert!(why.contains("free space"), "{refused}");
    // Refused at once from now on, with the same answer.
    let (status, _) = push(&agent, "svc-2", start + 999 * 1_000_000, 10).await;
    assert_eq!(status, 507);
    let health = agent.get_json("/healthz").await.expect("healthz");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["storage"]["writable"], false, "{health}");
    assert_eq!(health["storage"]["failure"]["disk_full"], true, "{health}");
    // The host collector's samples are dropped, and counted.
    eventually("host samples counted as dropped", || async {
        let text = agent.get_text("/metrics").await.ok()?;
        let dropped = metric(
            &text,
            "augur_samples_rejected_total{source=\"host\",reason=\"storage_failure\"}",
        );
        (dropped >= 3.0).then_some(())
    })
    .await
    .expect("drops counted");

    // Space is back: the agent resumes by itself.
    std::fs::remove_file(disk.path.join("filler")).expect("free space");
    let resumed = eventually("pushes accepted again", || async {
        let (status, _) = push(&agent, "svc-3", start, 100).await;
        (status == 200).then_some(())
    })
    .await;
    assert!(resumed.is_ok(), "the agent did not resume writing");
    let health = agent.get_json("/healthz").await.expect("healthz");
    assert_eq!(health["status"], "ok", "{health}");
    let text = agent.get_text("/metrics").await.expect("metrics");
    assert!(metric(&text, "augur_history_storage_recoveries_total") >= 1.0);
    let host_before = count(&agent, "full-host").await.expect("host samples");
    eventually("collection resumes", || async {
        (count(&agent, "full-host").await? > host_before).then_some(())
    })
    .await
    .expect("host samples are written again");

    // Everything acknowledged is there, and still after a restart.
    assert!(agent.terminate().await.expect("stops").success());
    let again = AgentProcess::start(AgentOptions {
        data_dir: Some(data_dir),
        config: config.to_owned(),
        ..Default::default()
    })
    .await
    .expect("restarts on the same data");
    assert_eq!(count(&again, "svc-1").await, Some(5_000));
    // (A resource none of whose pushes was acknowledged does not exist.)
    assert_eq!(count(&again, "svc-2").await.unwrap_or(0), acked);
    assert_eq!(count(&again, "svc-3").await, Some(100));
    drop(again);
    drop(disk);
}
