//! A three-agent fleet with leases on and one `augur-echo` service, for the migration tests and
//! `augur-bench migrate`: every node a lease voter (the signed fleet document names them; a lease
//! lasts 6 s, a move holds its service down for 1 s), helpers to read where the service runs and
//! what each proxy routes, and to run `augur migrate` and follow its journal.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::{Haproxy, LocalFleet, augur_json, path_str};

/// The nodes, by name.
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// `ready_after_ms`: how long a new instance fails its health checks (a slow start).
pub fn spec(port: u16, strategy: &str, standbys: u32, ready_after_ms: u64) -> String {
    let echo = crate::traffic_bench::echo_bin().expect("augur-echo is built");
    format!(
        "[service]\nname = \"echo\"\nport = {port}\nprotocol = \"http\"\nreplicas = 1\n\
         strategy = \"{strategy}\"\nstandbys = {standbys}\n\
         [service.driver]\nkind = \"process\"\ncommand = \"{}\"\nstop_grace = \"2s\"\n\
         env = {{ AUGUR_ECHO_READY_AFTER_MS = \"{ready_after_ms}\" }}\n\
         [service.health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         successes = 1\nfailures = 2\n",
        echo.display()
    )
}

/// A running fleet with leases on and the service applied.
#[derive(Debug)]
pub struct Setup {
    pub fleet: LocalFleet,
    pub cred: PathBuf,
    pub port: u16,
    /// An HAProxy n1 keeps in step, when asked for (and installed).
    pub haproxy: Option<Haproxy>,
}

pub async fn setup(strategy: &str, standbys: u32, ready_after_ms: u64) -> Setup {
    setup_with(strategy, standbys, ready_after_ms, false).await
}

/// The three-node fleet (with an HAProxy n1 keeps in step when `haproxy`).
pub async fn setup_with(
    strategy: &str,
    standbys: u32,
    ready_after_ms: u64,
    haproxy: bool,
) -> Setup {
    setup_nodes(&NODES, strategy, standbys, ready_after_ms, haproxy).await
}

/// A fleet of `nodes` (the first drives the HAProxy, when `haproxy`), every node a voter.
pub async fn setup_nodes(
    nodes: &[&str],
    strategy: &str,
    standbys: u32,
    ready_after_ms: u64,
    haproxy: bool,
) -> Setup {
    setup_nodes_config(nodes, strategy, standbys, ready_after_ms, haproxy, "").await
}

/// [`setup_nodes`], with `extra` added to every agent's configuration.
pub async fn setup_nodes_config(
    nodes: &[&str],
    strategy: &str,
    standbys: u32,
    ready_after_ms: u64,
    haproxy: bool,
    extra: &str,
) -> Setup {
    let haproxy = match crate::haproxy_bin().filter(|_| haproxy) {
        Some(bin) => Some(Haproxy::start(&bin, "echo").await.expect("haproxy starts")),
        None => None,
    };
    let mut fleet = LocalFleet::new().expect("fleet key");
    let base = format!("[collect]\nhost = false\n[services]\ndrain_grace = \"2s\"\n{extra}");
    for &n in nodes {
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
    for &n in nodes {
        fleet
            .until_all_see(n, "alive", Duration::from_secs(30))
            .await
            .expect("the fleet forms");
    }
    let cred = fleet.dir.path().join("operator.cred");
    crate::operator_credential(&fleet.fleet_key_path(), &cred).expect("operator credential");
    // Every node votes; a lease lasts 6 s (renewed at half-time), a move holds its service
    // down for 1 s.
    let mut voters = Vec::new();
    for &n in nodes {
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
    for &n in nodes {
        crate::eventually("the fleet document on every node", || async {
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
    crate::apply_service(&api, &file, &cred).expect("applied");
    Setup {
        fleet,
        cred,
        port,
        haproxy,
    }
}

/// The backends each node's proxies route `echo` to.
pub async fn routes(fleet: &LocalFleet) -> Vec<BTreeSet<String>> {
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
pub async fn instances(fleet: &LocalFleet) -> Vec<(String, String, String, String, String)> {
    instances_on(fleet, "n1").await
}

/// `echo`'s instances as `node` sees them (each node's view follows the gossip on its own).
pub async fn instances_on(
    fleet: &LocalFleet,
    node: &str,
) -> Vec<(String, String, String, String, String)> {
    let Some(agent) = fleet.agents.get(node) else {
        return Vec::new();
    };
    let v = agent.get_json("/v1/services").await.unwrap_or_default();
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

/// Waits until every node sees the same healthy standby of `echo`; returns it (id, node, addr,
/// health, role). Every node, because any of them may be asked to coordinate the switchover, and
/// one whose view still lags refuses it (409: no healthy standby); CI once caught that.
pub async fn healthy_standby(fleet: &LocalFleet) -> (String, String, String, String, String) {
    crate::eventually("a healthy standby seen by every node", || async {
        let mut seen = None;
        for node in fleet.agents.keys() {
            let standby = instances_on(fleet, node)
                .await
                .into_iter()
                .find(|i| i.4 == "standby" && i.3 == "healthy")?;
            match &seen {
                None => seen = Some(standby),
                Some(s) if s.0 == standby.0 => {}
                Some(_) => return None,
            }
        }
        seen
    })
    .await
    .expect("a healthy standby")
}

/// Waits until every proxy routes to exactly one healthy serving instance; returns it.
pub async fn one_serving(fleet: &LocalFleet, what: &str) -> (String, String, String) {
    crate::eventually(what, || async {
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
pub async fn augur(s: &Setup, coordinator: &str, args: Vec<String>) -> anyhow::Result<Value> {
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

pub fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// `augur migrate echo ARGS --wait` through `coordinator`; the final journal.
pub async fn migrate(s: &Setup, coordinator: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = owned(&["migrate", "echo"]);
    all.extend(owned(args));
    all.push("--wait".to_owned());
    augur(s, coordinator, all).await
}

/// Starts a migration through `coordinator` (answered once its lease is granted); its id. A
/// service that moved (or rolled back) a moment ago is refused for its hold-down: the refusal
/// says how long is left, which is waited out before asking again.
pub async fn start_migration(s: &Setup, coordinator: &str, args: &[&str]) -> String {
    let mut all = owned(&["migrate", "echo"]);
    all.extend(owned(args));
    for _ in 0..5 {
        match augur(s, coordinator, all.clone()).await {
            Ok(j) => return j["id"].as_str().expect("an id").to_owned(),
            Err(e) => match hold_down_left(&format!("{e:#}")) {
                Some(left) => tokio::time::sleep(left + Duration::from_millis(50)).await,
                None => panic!("migration started: {e:#}"),
            },
        }
    }
    panic!("migration started: still held down after five tries");
}

/// The time a hold-down refusal says is left (`... its hold-down has 589.9ms left`).
fn hold_down_left(error: &str) -> Option<Duration> {
    let rest = &error[error.find("hold-down has ")? + "hold-down has ".len()..];
    let value = &rest[..rest.find(" left")?];
    let (number, scale) = if let Some(ms) = value.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(us) = value.strip_suffix("µs") {
        (us, 1e-6)
    } else {
        (value.strip_suffix('s')?, 1.0)
    };
    let secs = number.parse::<f64>().ok()? * scale;
    (0.0..60.0)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

/// The migration's journal on `coordinator`, once `f` holds of it.
pub async fn until_journal(
    fleet: &LocalFleet,
    coordinator: &str,
    id: &str,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/v1/migrations/{id}");
    crate::eventually(what, || async {
        let j = fleet.agents.get(coordinator)?.get_json(&path).await.ok()?;
        f(&j).then_some(j)
    })
    .await
    .expect(what)
}

pub fn at_step(j: &Value, step: &str) -> bool {
    j["record"]["phase"]["phase"] == "forward" && j["record"]["phase"]["step"] == step
}

pub fn finished(j: &Value) -> bool {
    j["record"]["phase"]["phase"] == "finished"
}

/// The node (of the three) that runs no instance of `echo`.
pub async fn free_node(fleet: &LocalFleet) -> String {
    let busy: BTreeSet<String> = instances(fleet).await.into_iter().map(|i| i.1).collect();
    NODES
        .iter()
        .find(|n| !busy.contains(**n))
        .expect("a node without echo")
        .to_string()
}

pub fn fronts(s: &mut Setup, nodes: &[&str]) -> Vec<String> {
    let port = s.port;
    nodes
        .iter()
        .map(|n| format!("http://{}:{port}/", s.fleet.proxy_ip(n)))
        .collect()
}

pub fn failed(outcomes: &[crate::Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().cloned())
        .collect()
}
