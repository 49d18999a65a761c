//! The service catalog through the real CLI and HTTP API: an operator applies a spec with its
//! credential, lists it, changes and deletes it, over HTTP (the CLI) and gRPC; an unsigned or
//! foreign change is refused with 403, an invalid spec with a message naming the field, an older
//! version with FAILED_PRECONDITION, and the catalog survives a restart.

use augur_tests::{AgentOptions, AgentProcess, augur_json, http, path_str};

const SPEC: &str = r#"
[service]
name = "web"
port = 18080
replicas = 2

[service.driver]
kind = "process"
command = "/usr/bin/web"

[service.health]
http = "/healthz"
"#;

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Creates a fleet key at `path`; returns its public key.
fn fleet_key(path: &std::path::Path) -> String {
    let init = augur_json(&[
        "fleet",
        "init",
        "--out",
        path_str(path).expect("path"),
        "--json",
    ])
    .expect("fleet init");
    init["fleet_public_key"]
        .as_str()
        .expect("public key")
        .to_owned()
}

/// Creates an operator credential at `out` under the fleet key at `key`.
fn operator(key: &std::path::Path, out: &std::path::Path) {
    augur_tests::operator_credential(key, out).expect("operator credential");
}

#[tokio::test]
async fn operators_change_the_catalog_and_nobody_else_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("fleet.key");
    let public = fleet_key(&key);
    let cred = dir.path().join("operator.cred");
    operator(&key, &cred);
    let data = dir.path().join("data");
    let config = format!("[mesh]\nfleet_keys = [\"{public}\"]\n");
    let mut agent = AgentProcess::start(AgentOptions {
        data_dir: Some(data.clone()),
        config: config.clone(),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let api = agent.url("");
    let spec = dir.path().join("web.toml");
    std::fs::write(&spec, SPEC).expect("spec");
    let apply = |file: &std::path::Path| augur_tests::apply_service(&api, file, &cred);
    let a = apply(&spec).expect("applied");
    assert_eq!(
        (a["version"].as_u64(), a["outcome"].as_str()),
        (Some(1), Some("accepted"))
    );
    std::fs::write(&spec, SPEC.replace("replicas = 2", "replicas = 3")).expect("spec");
    let a = apply(&spec).expect("changed");
    assert_eq!(a["version"].as_u64(), Some(2));
    let list = augur_json(&["services", "--api", &api, "--json"]).expect("services");
    assert_eq!(list["services"][0]["spec"]["replicas"], 3);

    // An invalid spec is refused before anything is sent, naming the field.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, SPEC.replace("port = 18080", "port = 0")).expect("spec");
    let e = apply(&bad).expect_err("invalid").to_string();
    assert!(e.contains("service.port"), "{e}");
    // A change signed by another fleet's operator, or no document at all: 403 / 400.
    let other_key = dir.path().join("other.key");
    fleet_key(&other_key);
    let other_cred = dir.path().join("other.cred");
    operator(&other_key, &other_cred);
    let e = augur_json(&[
        "service",
        "apply",
        path_str(&spec).expect("path"),
        "--credential",
        path_str(&other_cred).expect("path"),
        "--api",
        &api,
    ])
    .expect_err("foreign operator")
    .to_string();
    assert!(e.contains("403"), "{e}");
    let resp = http()
        .post(agent.url("/v1/services"))
        .json(&serde_json::json!({"document": "augur-doc:AAAA"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);

    // The same over gRPC: listed, and changed with a document the operator signed.
    let mut grpc = augur_proto::v1::agent_client::AgentClient::connect(agent.grpc_url())
        .await
        .expect("grpc");
    let listed = grpc
        .list_services(augur_proto::v1::ListServicesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.versions.get("web"), Some(&2));
    let spec_json: serde_json::Value =
        serde_json::from_str(&listed.services[0].spec_json).expect("spec json");
    assert_eq!(spec_json["replicas"], 3);
    let op = augur_mesh::operator::OperatorCredential::load(&cred).expect("credential");
    let doc = op.sign(
        "service",
        "web",
        3,
        SPEC.replace("replicas = 2", "replicas = 1").into_bytes(),
        now_s(),
    );
    let changed = grpc
        .change_service(augur_proto::v1::ChangeServiceRequest {
            document: doc.to_string(),
        })
        .await
        .expect("changed")
        .into_inner();
    assert_eq!((changed.version, changed.outcome.as_str()), (3, "accepted"));
    let stale = grpc
        .change_service(augur_proto::v1::ChangeServiceRequest {
            document: op
                .sign("service", "web", 2, SPEC.as_bytes().to_vec(), now_s())
                .to_string(),
        })
        .await
        .expect_err("older");
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
    // Every refusal the agent saw is counted: the foreign operator, the unreadable document, the
    // older version (the invalid spec never left the CLI).
    let metrics = agent.get_text("/metrics").await.expect("metrics");
    assert_eq!(
        augur_tests::metric(&metrics, "augur_catalog_changes_refused_total"),
        3.0
    );
    assert_eq!(
        augur_tests::metric(&metrics, "augur_catalog_changes_accepted_total"),
        3.0
    );

    // Deleted; then a restart keeps the deletion.
    let d = augur_json(&[
        "service",
        "delete",
        "web",
        "--credential",
        path_str(&cred).expect("path"),
        "--api",
        &api,
        "--json",
    ])
    .expect("deleted");
    assert_eq!(d["version"].as_u64(), Some(4));
    agent.terminate().await.expect("stops");
    let agent = AgentProcess::start(AgentOptions {
        data_dir: Some(data),
        config,
        ..Default::default()
    })
    .await
    .expect("restarts");
    let list = augur_json(&["services", "--api", &agent.url(""), "--json"]).expect("services");
    assert_eq!(list["services"].as_array().map(Vec::len), Some(0));
    assert_eq!(list["versions"]["web"], 4);
}

/// Three agents in a fleet: a change applied on one reaches the others over libp2p; an agent that
/// joins later catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_reaches_every_node_and_a_late_joiner() {
    use std::time::Duration;

    let mut fleet = augur_tests::LocalFleet::new().expect("fleet key");
    for n in ["n1", "n2", "n3"] {
        fleet.start(n).await.expect("starts");
    }
    for n in ["n1", "n2", "n3"] {
        fleet
            .until_all_see(n, "alive", Duration::from_secs(30))
            .await
            .expect("the fleet forms");
    }
    let key = fleet.fleet_key_path();
    let cred = fleet.dir.path().join("operator.cred");
    operator(&key, &cred);
    let spec = fleet.dir.path().join("web.toml");
    std::fs::write(&spec, SPEC).expect("spec");
    augur_tests::apply_service(&fleet.agents["n1"].url(""), &spec, &cred).expect("applied on n1");
    let holds = |fleet: &augur_tests::LocalFleet, n: &'static str| {
        let url = fleet.agents[n].url("/v1/services");
        async move {
            let v: serde_json::Value = http().get(url).send().await.ok()?.json().await.ok()?;
            (v["versions"]["web"] == 1).then_some(())
        }
    };
    for n in ["n2", "n3"] {
        augur_tests::eventually(&format!("web on {n}"), || holds(&fleet, n))
            .await
            .expect("replicated");
    }
    fleet.start("n4").await.expect("n4 starts");
    augur_tests::eventually("web on the late joiner", || holds(&fleet, "n4"))
        .await
        .expect("caught up");

    // A runnable service with two replicas: two nodes each start one, and every node sees both
    // instances, healthy, in the members' signed values.
    let echo = fleet.dir.path().join("echo.toml");
    std::fs::write(
        &echo,
        format!(
            "[service]\nname = \"echo\"\nport = 18282\nreplicas = 2\n\
             [service.driver]\nkind = \"process\"\ncommand = \"{}\"\nstop_grace = \"2s\"\n\
             [service.health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nsuccesses = 1\n",
            env!("CARGO_BIN_EXE_augur-echo")
        ),
    )
    .expect("spec");
    augur_tests::apply_service(&fleet.agents["n2"].url(""), &echo, &cred).expect("applied on n2");
    for n in ["n1", "n2", "n3", "n4"] {
        let url = fleet.agents[n].url("/v1/members");
        let hosts = augur_tests::eventually(&format!("both echo instances seen from {n}"), || {
            let url = url.clone();
            async move {
                let v: serde_json::Value = http().get(url).send().await.ok()?.json().await.ok()?;
                let mut hosts = Vec::new();
                for m in v["members"].as_array()? {
                    for i in m["instances"].as_array().into_iter().flatten() {
                        if i["service"] == "echo" && i["health"] == "healthy" {
                            hosts.push((
                                m["node_name"].as_str()?.to_owned(),
                                i["addr"].as_str()?.to_owned(),
                            ));
                        }
                    }
                }
                (hosts.len() == 2).then_some(hosts)
            }
        })
        .await
        .expect("published");
        assert_ne!(hosts[0].0, hosts[1].0, "anti-affinity: two nodes");
        // Each answers at its published address.
        for (_, addr) in &hosts {
            let body = http()
                .get(format!("http://{addr}/"))
                .send()
                .await
                .expect("request")
                .text()
                .await
                .expect("body");
            assert!(body.starts_with("echo-"), "{body}");
        }
    }
}

/// A service applied to a lone agent runs here: the instance is started with its port, passes its
/// health checks and answers; deleting the service stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_service_runs_and_a_deleted_one_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("fleet.key");
    let public = fleet_key(&key);
    let cred = dir.path().join("operator.cred");
    operator(&key, &cred);
    let agent = AgentProcess::start(AgentOptions {
        config: format!("[mesh]\nfleet_keys = [\"{public}\"]\n[services]\ndrain_grace = \"1s\"\n"),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let api = agent.url("");
    let spec = dir.path().join("echo.toml");
    std::fs::write(
        &spec,
        format!(
            "[service]\nname = \"echo\"\nport = 18181\n\
             [service.driver]\nkind = \"process\"\ncommand = \"{}\"\nstop_grace = \"2s\"\n\
             [service.health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nsuccesses = 1\n",
            env!("CARGO_BIN_EXE_augur-echo")
        ),
    )
    .expect("spec");
    let cred_s = path_str(&cred).expect("path").to_owned();
    augur_tests::apply_service(&api, &spec, std::path::Path::new(&cred_s)).expect("applied");
    let addr = augur_tests::eventually("the instance healthy and routed", || async {
        let v = agent.get_json("/v1/services").await.ok()?;
        let i = v["instances"].as_array()?.first()?.clone();
        let addr = i["addr"].as_str()?.to_owned();
        let routed = v["routes"]["services"]["echo"].get(&addr).is_some();
        (i["health"] == "healthy" && i["id"] == "echo-0" && routed).then_some(addr)
    })
    .await
    .expect("runs");
    // The instance is a resource of the service's type: whether it runs, its health checks,
    // its process's CPU and memory are telemetry, and it gets a failure prediction.
    augur_tests::eventually("the instance's telemetry", || async {
        let v = agent.get_json("/v1/resources/echo-0").await.ok()?;
        let m = &v["latest"]["metrics"];
        (v["resource_type"] == "echo"
            && m["up"].as_f64()? == 1.0
            && m["health_ok"].as_f64()? == 1.0
            && m["health_latency_ms"].as_f64()? > 0.0
            && m["mem_rss_bytes"].as_f64()? > 0.0
            && m["cpu_util"].as_f64()? >= 0.0)
            .then_some(())
    })
    .await
    .expect("instance telemetry");
    augur_tests::eventually("a prediction for the instance", || async {
        let v = agent
            .get_json("/predict_failure?resource_id=echo-0")
            .await
            .ok()?;
        v["failure_probability"].as_f64().map(|_| ())
    })
    .await
    .expect("predicted");
    // Directly, and through this node's proxy on the service's port.
    for url in [
        format!("http://{addr}/"),
        "http://127.0.0.1:18181/".to_owned(),
    ] {
        let answer = http()
            .get(&url)
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        assert_eq!(answer.trim(), "echo-0", "{url}");
    }
    augur_json(&[
        "service",
        "delete",
        "echo",
        "--credential",
        &cred_s,
        "--api",
        &api,
        "--json",
    ])
    .expect("deleted");
    augur_tests::eventually("the instance stopped", || async {
        let v = agent.get_json("/v1/services").await.ok()?;
        v["instances"].as_array()?.is_empty().then_some(())
    })
    .await
    .expect("stops");
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "its port is closed"
    );
    // So is the proxy's, once the service left the catalog.
    augur_tests::eventually("the proxy closed", || async {
        tokio::net::TcpStream::connect("127.0.0.1:18181")
            .await
            .is_err()
            .then_some(())
    })
    .await
    .expect("the proxy stops listening");
}

/// A hook-driven service: the operator's scripts run `augur-echo` in the background. The agent
/// starts it through them and routes to it; across the agent's own restart the instance keeps
/// running and is adopted (same address, same epoch, same process); deleting the service stops
/// it through the stop script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_driven_instance_is_adopted_across_an_agent_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("fleet.key");
    let public = fleet_key(&key);
    let cred = dir.path().join("operator.cred");
    operator(&key, &cred);
    let data = dir.path().join("data");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let config = format!("[mesh]\nfleet_keys = [\"{public}\"]\n[services]\ndrain_grace = \"1s\"\n");
    let start = |data: &std::path::Path| {
        AgentProcess::start(AgentOptions {
            data_dir: Some(data.to_owned()),
            config: config.clone(),
            ..Default::default()
        })
    };
    let mut agent = start(&data).await.expect("agent starts");
    let pid_file = state.join("echo-0.pid");
    let spec = dir.path().join("echo.toml");
    std::fs::write(
        &spec,
        format!(
            "[service]\nname = \"echo\"\nport = {port}\n\
             [service.driver]\nkind = \"hook\"\n\
             start = \"nohup {echo} > /dev/null 2>&1 & echo $! > {s}/$AUGUR_INSTANCE.pid\"\n\
             status = \"kill -0 $(cat {s}/$AUGUR_INSTANCE.pid 2>/dev/null) 2>/dev/null && echo running || echo stopped\"\n\
             stop = \"kill $(cat {s}/$AUGUR_INSTANCE.pid) 2>/dev/null; rm -f {s}/$AUGUR_INSTANCE.pid; true\"\n\
             [service.health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nsuccesses = 1\n",
            port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port(),
            echo = env!("CARGO_BIN_EXE_augur-echo"),
            s = state.display(),
        ),
    )
    .expect("spec");
    let cred_s = path_str(&cred).expect("path").to_owned();
    augur_tests::apply_service(&agent.url(""), &spec, std::path::Path::new(&cred_s))
        .expect("applied");
    let healthy = |agent: &AgentProcess| {
        let url = agent.url("/v1/services");
        async move {
            let v: serde_json::Value = http().get(url).send().await.ok()?.json().await.ok()?;
            let i = v["instances"].as_array()?.first()?.clone();
            (i["health"] == "healthy").then(|| (i["addr"].clone(), i["epoch"].clone()))
        }
    };
    let before = augur_tests::eventually("the hook instance healthy", || healthy(&agent))
        .await
        .expect("runs");
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let body = http()
        .get(format!("http://{}/", before.0.as_str().expect("addr")))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert_eq!(body.trim(), "echo-0");

    // The agent restarts; the instance is not stopped, and is adopted as it is.
    agent.terminate().await.expect("stops");
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("still recorded"),
        pid
    );
    let agent = start(&data).await.expect("agent restarts");
    augur_tests::eventually("an instance.started event saying adopted", || async {
        let v = agent
            .get_json("/v1/events?topic=instance.started")
            .await
            .ok()?;
        v["events"]
            .as_array()?
            .iter()
            .any(|e| {
                e["detail"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("adopted"))
            })
            .then_some(())
    })
    .await
    .expect("the instance adopted");
    let after = augur_tests::eventually("the adopted instance healthy", || healthy(&agent))
        .await
        .expect("adopted");
    assert_eq!(after, before, "same address, same epoch");
    assert_eq!(std::fs::read_to_string(&pid_file).expect("pid file"), pid);

    // Deleted: stopped through the stop script.
    augur_json(&[
        "service",
        "delete",
        "echo",
        "--credential",
        &cred_s,
        "--api",
        &agent.url(""),
        "--json",
    ])
    .expect("deleted");
    augur_tests::eventually("the stop hook ran", || async {
        (!pid_file.exists()).then_some(())
    })
    .await
    .expect("stopped");
    let pid: i32 = pid.trim().parse().expect("pid");
    augur_tests::eventually("the echo process gone", || async {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_err()
            .then_some(())
    })
    .await
    .expect("gone");
}

/// Bad input and faults, each a clear error on the API, an event and a counter, none stopping
/// the agent or the proxy of the service that works: a command that does not exist, a health
/// check that never passes, a service port already in use, an HAProxy socket that is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_reported_and_counted_and_the_rest_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("fleet.key");
    let public = fleet_key(&key);
    let cred = dir.path().join("operator.cred");
    operator(&key, &cred);
    let agent = AgentProcess::start(AgentOptions {
        config: format!(
            "[mesh]\nfleet_keys = [\"{public}\"]\n\
             [services]\ndrain_grace = \"1s\"\n\
             [services.haproxy]\nsocket = \"{}\"\n",
            dir.path().join("no-haproxy.sock").display()
        ),
        ..Default::default()
    })
    .await
    .expect("agent starts");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    // Something else listens on the port of `taken`.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = squatter.local_addr().expect("addr").port();
    let ok_port = free();
    let echo = env!("CARGO_BIN_EXE_augur-echo");
    let health = "[service.health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nsuccesses = 1\nfailures = 2\n";
    let specs = [
        (
            "nocmd",
            free(),
            "command = \"/nonexistent/augur-test-command\"".to_owned(),
        ),
        // Runs, but never listens: its checks never pass.
        (
            "sick",
            free(),
            "command = \"/bin/sleep\"\nargs = [\"3600\"]".to_owned(),
        ),
        ("taken", taken_port, format!("command = \"{echo}\"")),
        ("ok", ok_port, format!("command = \"{echo}\"")),
    ];
    for (name, port, driver) in &specs {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[service]\nname = \"{name}\"\nport = {port}\n\
                 [service.driver]\nkind = \"process\"\n{driver}\nstop_grace = \"1s\"\n{health}"
            ),
        )
        .expect("spec");
        augur_tests::apply_service(&agent.url(""), &file, &cred).expect("applied");
    }
    // The API says what is wrong with each.
    let list = augur_tests::eventually("every fault on the API", || async {
        let v = agent.get_json("/v1/services").await.ok()?;
        let instance = |id: &str| {
            v["instances"]
                .as_array()?
                .iter()
                .find(|i| i["id"] == id)
                .cloned()
        };
        let nocmd = instance("nocmd-0")?;
        let sick = instance("sick-0")?;
        let errors = v["traffic_errors"].as_array()?;
        let traffic = |service: &str, proxy: &str, text: &str| {
            errors.iter().any(|e| {
                e["service"] == service
                    && e["proxy"] == proxy
                    && e["reason"].as_str().is_some_and(|r| r.contains(text))
            })
        };
        (nocmd["health"] == "down"
            && nocmd["reason"]
                .as_str()?
                .contains("cannot start /nonexistent/augur-test-command")
            && sick["health"] == "unhealthy"
            && sick["reason"].as_str()?.contains("GET http://")
            && traffic("taken", "embedded", &format!("port {taken_port} is in use"))
            && traffic("ok", "haproxy", "cannot reach HAProxy's admin socket")
            && instance("ok-0")?["health"] == "healthy")
            .then_some(v)
    })
    .await
    .expect("faults reported");
    assert!(
        list["routes"]["services"]["ok"]
            .as_object()
            .is_some_and(|o| o.len() == 1),
        "{list}"
    );
    // Events, one per fault.
    let events = agent.get_json("/v1/events").await.expect("events");
    let topics: Vec<(String, String)> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap_or_default().to_owned(),
                e["detail"]["service"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    for (topic, service) in [
        ("instance.exited", "nocmd"),
        ("instance.unhealthy", "sick"),
        ("traffic.error", "taken"),
        ("traffic.error", "ok"),
        ("instance.healthy", "ok"),
    ] {
        assert!(
            topics.contains(&(topic.to_owned(), service.to_owned())),
            "no {topic} about {service}: {topics:?}"
        );
    }
    // Counters.
    let m = agent.get_text("/metrics").await.expect("metrics");
    for (prefix, what) in [
        (
            "augur_service_instance_exits_total{service=\"nocmd\"}",
            "the missing command",
        ),
        (
            "augur_service_instance_became_unhealthy_total{service=\"sick\"}",
            "the failing checks",
        ),
        (
            "augur_traffic_errors_total{service=\"taken\",proxy=\"embedded\",reason=\"port_in_use\"}",
            "the port in use",
        ),
        (
            "augur_traffic_errors_total{service=\"ok\",proxy=\"haproxy\",reason=\"socket\"}",
            "the missing HAProxy",
        ),
    ] {
        assert!(augur_tests::metric(&m, prefix) >= 1.0, "{what}: {prefix}");
    }
    // The service that works is served through its proxy all along.
    let body = http()
        .get(format!("http://127.0.0.1:{ok_port}/"))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert_eq!(body.trim(), "ok-0");
    drop(squatter);
}
