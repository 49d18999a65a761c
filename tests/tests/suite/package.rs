//! The Debian package: its contents and metadata (`dpkg-deb -I`/`-c`, lintian), and a real install:
//! `dpkg -i`, three hosts in network namespaces running the installed binary with the installed
//! configuration and each host's token, a fleet formed, one host's link taken down (declared dead)
//! and restored (rejoined), then `dpkg -r` and `dpkg -P`.
//!
//! `.ci/run` builds the package (`cargo deb -p augur-agent`) and names it in `AUGUR_DEB`; without
//! it these tests skip (with `AUGUR_REQUIRE_PACKAGING` set they fail instead). The install test
//! changes the system (the dpkg database, /usr/bin/augur, the augur user, network namespaces), so
//! it runs only as root, and undoes what it did even when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use augur_tests::{augur_json, packaging_tool, path_str};
use serde_json::Value;

const PACKAGED_CONFIG: &str = include_str!("../../../packaging/augur.toml");
const CHANGELOG: &str = include_str!("../../../packaging/debian/changelog");
/// The agent crate's version (the workspace's), which the package's version carries.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The package under test, or `None` to skip.
fn deb() -> Option<PathBuf> {
    match std::env::var_os("AUGUR_DEB") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                std::env::var_os("AUGUR_REQUIRE_PACKAGING").is_none(),
                "AUGUR_DEB is not set; .ci/run builds the package and sets it"
            );
            eprintln!("skipped: AUGUR_DEB not set (build with cargo deb -p augur-agent)");
            None
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `field` in a control file's text.
fn field<'a>(control: &'a str, name: &str) -> Option<&'a str> {
    control.lines().find_map(|l| {
        l.trim_start()
            .strip_prefix(name)?
            .strip_prefix(':')
            .map(str::trim)
    })
}

#[test]
fn the_package_holds_what_a_host_needs_and_lintian_finds_no_error() {
    let Some(deb) = deb() else { return };
    let Some(dpkg_deb) = packaging_tool("dpkg-deb") else {
        return;
    };
    let info = text(&run(Command::new(&dpkg_deb).arg("-f").arg(&deb)));
    assert_eq!(field(&info, "Package"), Some("augur"), "{info}");
    let version = field(&info, "Version").expect("Version");
    assert_eq!(version, format!("{VERSION}-1"), "package version");
    let first = CHANGELOG.lines().next().expect("changelog");
    assert!(
        first.starts_with(&format!("augur ({version})")),
        "the changelog's newest entry is the package's version: {first}"
    );
    let depends = field(&info, "Depends").expect("Depends");
    assert!(
        depends.contains("libc6") && depends.contains("systemd"),
        "{depends}"
    );
    assert!(field(&info, "Maintainer").is_some() && field(&info, "Description").is_some());

    let conffiles = text(&run(Command::new(&dpkg_deb)
        .arg("--info")
        .arg(&deb)
        .arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/augur/augur.toml");

    let listing = text(&run(Command::new(&dpkg_deb).arg("-c").arg(&deb)));
    for (path, mode) in [
        ("./usr/bin/augur", "-rwxr-xr-x"),
        ("./usr/lib/systemd/system/augur.service", "-rw-r--r--"),
        ("./usr/lib/sysusers.d/augur.conf", "-rw-r--r--"),
        ("./etc/augur/augur.toml", "-rw-r--r--"),
        ("./usr/share/doc/augur/copyright", "-rw-r--r--"),
        ("./usr/share/doc/augur/changelog.Debian.gz", "-rw-r--r--"),
        ("./usr/share/doc/augur/README.md", "-rw-r--r--"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} missing from the package:\n{listing}"));
        assert!(line.starts_with(mode), "{line}");
        assert!(line.contains(" 0/0 "), "owned by root: {line}");
    }

    // What is inside: the configuration and unit as in the source tree; the binary's version.
    let dir = tempfile::tempdir().expect("temp");
    run(Command::new(&dpkg_deb).arg("-x").arg(&deb).arg(dir.path()));
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).expect(p);
    assert_eq!(read("etc/augur/augur.toml"), PACKAGED_CONFIG);
    assert_eq!(
        read("usr/lib/systemd/system/augur.service"),
        include_str!("../../../packaging/augur.service")
    );
    assert!(read("usr/lib/sysusers.d/augur.conf").contains("u augur"));
    let v = text(&run(
        Command::new(dir.path().join("usr/bin/augur")).arg("--version")
    ));
    assert_eq!(v.trim(), format!("augur {VERSION}"));
    let scripts = tempfile::tempdir().expect("temp");
    run(Command::new(&dpkg_deb)
        .arg("-e")
        .arg(&deb)
        .arg(scripts.path()));
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh")
            .arg("-n")
            .arg(scripts.path().join(script)));
    }
    let postinst = std::fs::read_to_string(scripts.path().join("postinst")).expect("postinst");
    assert!(
        postinst.contains("systemd-sysusers") && postinst.contains("augur.conf"),
        "{postinst}"
    );

    let Some(lintian) = packaging_tool("lintian") else {
        return;
    };
    let out = Command::new(&lintian)
        .arg("--allow-root")
        .arg(&deb)
        .output()
        .expect("lintian runs");
    let report = text(&out);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{report}");
    // The warnings docs/BENCHMARKS.md lists, with their reasons; a new one is a finding to read.
    for l in report.lines().filter(|l| l.starts_with("W:")) {
        assert!(
            l.contains("no-manual-page") || l.contains("initial-upload-closes-no-bugs"),
            "a lintian warning not listed in docs: {l}"
        );
    }
}

/// What the install test set up, undone on drop (whether the test passed or not).
struct Installed {
    namespaces: Vec<String>,
    agents: Vec<std::process::Child>,
    dir: tempfile::TempDir,
}

const HUB: &str = "augur-pkg-hub";

impl Installed {
    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(args));
    }

    /// A host: a namespace with loopback up and a veth to the hub's bridge, at 10.77.0.`n`/24.
    fn add_host(&mut self, n: u8) -> String {
        let ns = format!("augur-pkg-h{n}");
        let (inner, outer) = (format!("ap{n}i"), format!("ap{n}o"));
        self.ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.ip(&[
            "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer, "netns",
            HUB,
        ]);
        self.ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.77.0.{n}/24"),
            "dev",
            &inner,
        ]);
        self.ip(&["-n", &ns, "link", "set", &inner, "up"]);
        self.ip(&["-n", HUB, "link", "set", &outer, "master", "br0"]);
        self.ip(&["-n", HUB, "link", "set", &outer, "up"]);
        ns
    }

    /// `augur members --json` run inside `ns` (the API listens on that namespace's loopback).
    fn members(&self, ns: &str) -> Option<Vec<(String, String)>> {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "/usr/bin/augur", "members", "--json"])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            v["members"]
                .as_array()?
                .iter()
                .filter_map(|m| {
                    Some((
                        m["node_name"].as_str()?.to_owned(),
                        m["status"].as_str()?.to_owned(),
                    ))
                })
                .collect(),
        )
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("dpkg").args(["-P", "augur"]).output();
        let _ = &self.dir;
    }
}

fn dpkg_status() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "augur"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Polls `check` every 200 ms until it holds or `limit` passes.
async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_on_three_hosts_it_forms_a_fleet_sees_a_host_die_and_rejoin_then_uninstalls() {
    let Some(deb) = deb() else { return };
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var_os("AUGUR_REQUIRE_PACKAGING").is_none(),
            "the install test needs root (dpkg -i, ip netns)"
        );
        eprintln!("skipped: not root");
        return;
    }
    let Some(_) = packaging_tool("ip") else {
        return;
    };
    assert!(
        dpkg_status().is_empty() || dpkg_status().contains("not-installed"),
        "augur is installed on this machine already ({}); the test would replace it",
        dpkg_status()
    );
    // Namespaces left by a run that was killed before it could clean up.
    for ns in [HUB, "augur-pkg-h1", "augur-pkg-h2", "augur-pkg-h3"] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
    let mut setup = Installed {
        namespaces: Vec::new(),
        agents: Vec::new(),
        dir: tempfile::tempdir().expect("temp"),
    };

    // Install.
    run(Command::new("dpkg").arg("-i").arg(&deb));
    assert_eq!(dpkg_status(), "install ok installed");
    let user = text(&run(Command::new("getent").args(["passwd", "augur"])));
    assert!(user.contains(":/var/lib/augur:"), "{user}");
    let meta = std::fs::metadata("/var/lib/augur").expect("/var/lib/augur");
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let uid: u32 = user
        .split(':')
        .nth(2)
        .and_then(|u| u.parse().ok())
        .expect("uid");
    assert_eq!(meta.uid(), uid, "/var/lib/augur belongs to augur");
    assert_eq!(meta.permissions().mode() & 0o777, 0o750);
    assert_eq!(
        std::fs::read_to_string("/etc/augur/augur.toml").expect("conffile"),
        PACKAGED_CONFIG
    );
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/augur.service").exists(),
        "the unit is enabled"
    );
    let v = text(&run(Command::new("/usr/bin/augur").arg("--version")));
    assert_eq!(v.trim(), format!("augur {VERSION}"));
    run(Command::new("/usr/bin/augur").args(["validate-config", "/etc/augur/augur.toml"]));

    // An upgrade (the same package, one revision later) keeps data and an edited configuration.
    std::fs::write("/var/lib/augur/kept", "data").expect("writes into /var/lib/augur");
    let edited = format!("{PACKAGED_CONFIG}# edited on this host\n");
    std::fs::write("/etc/augur/augur.toml", &edited).expect("edits the configuration");
    let tree = setup.dir.path().join("v2");
    run(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let c = std::fs::read_to_string(&control).expect("control");
    std::fs::write(
        &control,
        c.replace(
            &format!("Version: {VERSION}-1"),
            &format!("Version: {VERSION}-2"),
        ),
    )
    .expect("bumps the revision");
    let v2 = setup.dir.path().join("augur_v2.deb");
    run(Command::new("dpkg-deb").arg("-b").arg(&tree).arg(&v2));
    run(Command::new("dpkg")
        .args(["-i", "--force-confold"])
        .arg(&v2));
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "augur"])
        .output()
        .expect("dpkg-query");
    assert_eq!(text(&installed), format!("{VERSION}-2"));
    assert_eq!(
        std::fs::read_to_string("/var/lib/augur/kept")
            .ok()
            .as_deref(),
        Some("data"),
        "an upgrade keeps the data"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/augur/augur.toml").expect("conffile"),
        edited,
        "an upgrade keeps the host's configuration"
    );
    // Where systemd runs, the upgrade restarts the agent (the unit is not stopped before it).
    let postinst =
        std::fs::read_to_string("/var/lib/dpkg/info/augur.postinst").expect("installed postinst");
    assert!(
        postinst.contains("_dh_action=restart") && postinst.contains("deb-systemd-invoke"),
        "{postinst}"
    );

    // Three hosts on one bridge.
    setup.ip(&["netns", "add", HUB]);
    setup.namespaces.push(HUB.to_owned());
    setup.ip(&["-n", HUB, "link", "add", "br0", "type", "bridge"]);
    setup.ip(&["-n", HUB, "link", "set", "br0", "up"]);
    let hosts: Vec<String> = (1..=3).map(|n| setup.add_host(n)).collect();

    // The fleet: a key on a trusted machine, a token per host (bound to its node key).
    let key = setup.dir.path().join("fleet.key");
    let init = augur_json(&[
        "fleet",
        "init",
        "--out",
        path_str(&key).expect("utf-8"),
        "--json",
    ])
    .expect("fleet init");
    let fleet_pub = init["fleet_public_key"]
        .as_str()
        .expect("fleet_public_key")
        .to_owned();
    for (i, ns) in hosts.iter().enumerate() {
        let n = i + 1;
        // Each host's state, as /var/lib/augur would be on its own machine, owned by augur.
        let data = setup.dir.path().join(format!("h{n}"));
        let token = augur_json(&[
            "fleet",
            "token",
            "--fleet-key",
            path_str(&key).expect("utf-8"),
            "--data-dir",
            path_str(&data).expect("utf-8"),
            "--json",
        ])
        .expect("fleet token")["join_token"]
            .as_str()
            .expect("join_token")
            .to_owned();
        run(Command::new("chown")
            .arg("-R")
            .arg("augur:augur")
            .arg(&data));
        run(Command::new("chmod").arg("a+x").arg(setup.dir.path()));
        let log = std::fs::File::create(setup.dir.path().join(format!("h{n}.log"))).expect("log");
        // As the unit runs it: user augur, the installed binary and configuration. setpriv execs
        // the agent (as `ip netns exec` does), so the child is the agent and gets the signals.
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            ns,
            "setpriv",
            "--reuid=augur",
            "--regid=augur",
        ])
        .args(["--init-groups", "--"])
        .args([
            "/usr/bin/augur",
            "agent",
            "--config",
            "/etc/augur/augur.toml",
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(["--node-name", &format!("host{n}")])
        .args(["--gossip-addr", &format!("10.77.0.{n}:7072")])
        .args(["--p2p-addr", &format!("10.77.0.{n}:7073")])
        .args(["--fleet-key", &fleet_pub])
        .args(["--join-token", &token])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(log);
        if n > 1 {
            // host1 seeds the others.
            cmd.args(["--seed", "10.77.0.1:7072"]);
        }
        for (k, _) in std::env::vars() {
            // The agent reads AUGUR_ variables as configuration (AUGUR_DEB included).
            if k.starts_with("AUGUR_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().expect("starts the installed agent");
        setup.agents.push(child);
    }
    let names = ["host1", "host2", "host3"];
    let sees = |setup: &Installed, ns: &str, target: &str, status: &str| {
        setup
            .members(ns)
            .is_some_and(|m| m.iter().any(|(n, s)| n == target && s == status))
    };
    let formed = until(
        "every host sees every other alive",
        Duration::from_secs(60),
        || {
            hosts
                .iter()
                .all(|ns| names.iter().all(|t| sees(&setup, ns, t, "alive")))
        },
    )
    .await;
    eprintln!("fleet formed in {formed:?}");

    // host3's link goes down: host1 and host2 declare it dead.
    setup.ip(&["-n", HUB, "link", "set", "ap3o", "down"]);
    let dead = until(
        "host1 and host2 see host3 dead",
        Duration::from_secs(60),
        || {
            hosts[..2]
                .iter()
                .all(|ns| sees(&setup, ns, "host3", "dead"))
        },
    )
    .await;
    eprintln!("host3 declared dead in {dead:?}");
    // Restored: it rejoins.
    setup.ip(&["-n", HUB, "link", "set", "ap3o", "up"]);
    let back = until(
        "every host sees host3 alive again",
        Duration::from_secs(60),
        || hosts.iter().all(|ns| sees(&setup, ns, "host3", "alive")),
    )
    .await;
    eprintln!("host3 rejoined in {back:?}");

    // Stop the agents (as systemd would: SIGTERM), then remove and purge.
    for a in &mut setup.agents {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(a.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    for a in &mut setup.agents {
        let status = a.wait().expect("agent exits");
        assert!(status.success(), "the agent stopped cleanly: {status:?}");
    }

    run(Command::new("dpkg").args(["-r", "augur"]));
    assert_eq!(dpkg_status(), "deinstall ok config-files");
    assert!(
        !Path::new("/usr/bin/augur").exists(),
        "the binary is removed"
    );
    assert!(
        !Path::new("/usr/lib/systemd/system/augur.service").exists(),
        "the unit is removed"
    );
    assert!(
        Path::new("/var/lib/augur/kept").exists(),
        "removal keeps the data"
    );
    assert!(
        Path::new("/etc/augur/augur.toml").exists(),
        "removal keeps the configuration (a conffile)"
    );

    run(Command::new("dpkg").args(["-P", "augur"]));
    let status = dpkg_status();
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "{status}"
    );
    assert!(
        !Path::new("/var/lib/augur").exists(),
        "purge deletes the data"
    );
    assert!(
        !Path::new("/etc/augur").exists(),
        "purge deletes the configuration"
    );
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/augur.service").exists(),
        "purge leaves no enablement behind"
    );
}
