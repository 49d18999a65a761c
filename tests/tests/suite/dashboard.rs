//! The dashboard in a real browser: Debian's Chromium, driven through chromedriver (WebDriver,
//! fantoccini), against a real three-agent fleet with a service, pushed telemetry drifting towards
//! its limit, trained models and a migration. Each view is checked for what it must show, events
//! published after the page loaded must appear without a reload, and the browser's console must
//! stay free of errors (CSP violations included). `AUGUR_SCREENSHOTS=DIR` writes a PNG of each
//! view there (the README's come from `AUGUR_SCREENSHOTS=docs`).

use std::path::PathBuf;
use std::time::Duration;

use augur_tests::migration_fleet::{NODES, migrate, one_serving, setup};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// A chromedriver process on a free loopback port, killed with the test.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start(bin: &std::path::Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        augur_tests::eventually("chromedriver ready", || async {
            let v: Value = augur_tests::http()
                .get(&status)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["value"]["ready"] == true).then_some(())
        })
        .await
        .expect("chromedriver answers");
        Driver { _child: child, url }
    }

    async fn session(&self, chromium: &std::path::Path) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1400", "--hide-scrollbars"],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        ClientBuilder::rustls()
            .expect("a TLS-capable client")
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }

    /// The browser's console messages since the last call (chromedriver's log endpoint).
    async fn console(&self, client: &Client) -> Vec<Value> {
        let id = client
            .session_id()
            .await
            .ok()
            .flatten()
            .expect("a session id");
        let v: Value = augur_tests::http()
            .post(format!("{}/session/{id}/se/log", self.url))
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .expect("the log endpoint")
            .json()
            .await
            .expect("log entries");
        v["value"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("chromedriver's log endpoint answered {v}"))
    }
}

/// Waits (up to a minute) for an element the page draws.
async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if let Some(dir) = std::env::var_os("AUGUR_SCREENSHOTS") {
        let mut dir = PathBuf::from(dir);
        if dir.is_relative() {
            dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(dir);
        }
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        std::fs::write(dir.join(format!("dashboard-{name}.png")), png).expect("written");
    }
}

/// Telemetry of `db-1` drifting towards its memory limit (0.95): 600 one-second samples up to now.
fn drifting() -> String {
    let end = augur_tests::now_us();
    (0..600_i64)
        .map(|i| {
            let ts = augur_tests::rfc3339(end - (600 - i) * 1_000_000);
            // A slow rise with a little deterministic wobble.
            let mem = 0.45 + 0.0006 * i as f64 + 0.004 * ((i * 7919 % 13) as f64 / 13.0 - 0.5);
            let lat = 20.0 + ((i * 31 % 11) as f64);
            format!(
                "{{\"ts\":\"{ts}\",\"resource_id\":\"db-1\",\"resource_type\":\"db\",\"metrics\":{{\"mem_used_ratio\":{mem},\"latency_ms\":{lat}}}}}\n"
            )
        })
        .collect()
}

/// Pixels of the canvas under `css` that are (nearly) each of `colors` (RGB).
async fn pixels(client: &Client, css: &str, colors: &[[u8; 3]]) -> Vec<u64> {
    let script = r#"
        const [css, colors] = arguments;
        const c = document.querySelector(css);
        if (!c) return null;
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        const counts = colors.map(() => 0);
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] < 250) continue;
            colors.forEach((k, j) => {
                if (Math.abs(d[i] - k[0]) + Math.abs(d[i + 1] - k[1]) + Math.abs(d[i + 2] - k[2]) < 24) counts[j]++;
            });
        }
        return counts;
    "#;
    let v = client
        .execute(script, vec![json!(css), json!(colors)])
        .await
        .expect("the canvas is read");
    v.as_array()
        .unwrap_or_else(|| panic!("no canvas at {css}"))
        .iter()
        .map(|x| x.as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_forecasts_events_and_migrations_live_in_chromium() {
    let Some((chromium, chromedriver)) = augur_tests::browser_bins() else {
        return;
    };
    let mut s = setup("live", 0, 0).await;
    let n1 = s.fleet.agents["n1"].url("");
    let http = augur_tests::http();
    let pushed: Value = http
        .post(format!("{n1}/v1/telemetry"))
        .body(drifting())
        .send()
        .await
        .expect("pushed")
        .json()
        .await
        .expect("an answer");
    assert_eq!(pushed["accepted"], 600, "{pushed}");
    let trained: Value = http
        .post(format!("{n1}/v1/models/train"))
        .send()
        .await
        .expect("trained")
        .json()
        .await
        .expect("an answer");
    assert!(
        trained["outcomes"]
            .as_array()
            .is_some_and(|o| o.iter().any(|t| t["trained"]["resource_type"] == "db")),
        "{trained}"
    );
    let (_, from, _) = one_serving(&s.fleet, "echo served through every proxy").await;

    let driver = Driver::start(&chromedriver).await;
    let client = driver.session(&chromium).await;

    // Fleet: every member listed, with its status.
    client
        .goto(&format!("{n1}/ui/#/fleet"))
        .await
        .expect("opens");
    for n in NODES {
        wait_for(
            &client,
            &format!("#members tr[data-node=\"{n}\"][data-status=\"alive\"]"),
        )
        .await;
    }
    wait_for(&client, "#predictions tr[data-resource=\"db-1\"]").await;
    wait_for(&client, "#live.live").await;
    // Marks this document: a reload would lose it.
    client
        .execute("window.augurLoadedOnce = true; return true;", vec![])
        .await
        .expect("marked");
    screenshot(&client, "fleet").await;

    // A resource: the forecast plot drew history, forecast and limit; the probability is the API's.
    client
        .goto(&format!("{n1}/ui/#/resource/db-1"))
        .await
        .expect("hash change");
    let plot = ".forecast-plot[data-metric=\"mem_used_ratio\"]";
    let drawn = wait_for(&client, &format!("{plot}[data-points]")).await;
    let series = drawn
        .attr("data-series")
        .await
        .expect("attr")
        .unwrap_or_default();
    assert_eq!(series, "history,forecast,90 % high,90 % low,limit");
    let points: usize = drawn
        .attr("data-points")
        .await
        .expect("attr")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    assert!(points > 0, "the forecast has points over the horizon");
    // history #2b6cb0, forecast #805ad5, limit #e53e3e
    let counts = pixels(
        &client,
        &format!("{plot} canvas"),
        &[[0x2b, 0x6c, 0xb0], [0x80, 0x5a, 0xd5], [0xe5, 0x3e, 0x3e]],
    )
    .await;
    assert!(
        counts.iter().all(|&c| c > 50),
        "history, forecast and limit drawn on the canvas: {counts:?}"
    );
    let api: Value = http
        .get(format!("{n1}/predict_failure?resource_id=db-1"))
        .send()
        .await
        .expect("predict")
        .json()
        .await
        .expect("json");
    let want = api["failure_probability"].as_f64().expect("a probability");
    let prob = wait_for(&client, "#prob[data-value]").await;
    let shown: f64 = prob
        .attr("data-value")
        .await
        .expect("attr")
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert_eq!(shown, want, "the page shows /predict_failure's probability");
    let text = prob.text().await.expect("text");
    let pct: f64 = text.trim_end_matches(" %").parse().expect("a percentage");
    assert!(
        (pct - 100.0 * want).abs() <= 0.05 + 1e-9,
        "{text} vs {want}"
    );
    wait_for(&client, "#score-plot canvas").await;
    wait_for(&client, ".metric-plot[data-metric=\"latency_ms\"] canvas").await;
    screenshot(&client, "resource").await;

    // Models: the trained type, with how it scored against Holt.
    client
        .goto(&format!("{n1}/ui/#/models"))
        .await
        .expect("hash change");
    let row = wait_for(&client, "#models tr[data-type=\"db\"]").await;
    assert!(
        row.text().await.expect("text").contains("vs"),
        "MSE against Holt shown"
    );
    screenshot(&client, "models").await;

    // Events: a migration started after the page loaded streams in without a reload.
    client
        .goto(&format!("{n1}/ui/#/events"))
        .await
        .expect("hash change");
    wait_for(&client, "#events tbody").await;
    let journal = migrate(&s, "n1", &["--strategy", "live", "--from", from.as_str()])
        .await
        .expect("the migration completes");
    assert_eq!(
        journal["record"]["phase"]["outcome"], "completed",
        "{journal}"
    );
    wait_for(&client, "#events tr[data-topic=\"migration.finished\"]").await;
    wait_for(&client, "#events tr[data-topic=\"migration.step\"]").await;
    screenshot(&client, "events").await;

    // Migrations: the timeline with its outcome.
    client
        .goto(&format!("{n1}/ui/#/migrations"))
        .await
        .expect("hash change");
    let m = wait_for(&client, ".migration[data-outcome=\"completed\"]").await;
    let steps = m
        .find_all(Locator::Css(".timeline li"))
        .await
        .expect("steps");
    assert!(steps.len() >= 3, "the migration's steps: {}", steps.len());
    screenshot(&client, "migrations").await;

    // Services: the instance where it runs now, and the traffic weights.
    client
        .goto(&format!("{n1}/ui/#/services"))
        .await
        .expect("hash change");
    let svc = wait_for(&client, "#services tr[data-service=\"echo\"]").await;
    let text = svc.text().await.expect("text");
    assert!(text.contains("healthy") && text.contains("live"), "{text}");
    screenshot(&client, "services").await;

    // Fleet again: a node that joins now appears without a reload.
    client
        .goto(&format!("{n1}/ui/#/fleet"))
        .await
        .expect("hash change");
    s.fleet.start("n4").await.expect("n4 starts");
    wait_for(
        &client,
        "#members tr[data-node=\"n4\"][data-status=\"alive\"]",
    )
    .await;
    let same = client
        .execute("return window.augurLoadedOnce === true;", vec![])
        .await
        .expect("read");
    assert_eq!(same, json!(true), "the page was never reloaded");

    // The console is read: a message the page did not write is found there, so an empty list of
    // errors below means there were none.
    client
        .execute("console.error('augur-test-probe'); return true;", vec![])
        .await
        .expect("probe");
    let console = driver.console(&client).await;
    assert!(
        console.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("augur-test-probe"))),
        "the console is collected: {console:#?}"
    );
    let errors: Vec<Value> = console
        .into_iter()
        .filter(|e| {
            !e["message"]
                .as_str()
                .is_some_and(|m| m.contains("augur-test-probe"))
        })
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    client.close().await.expect("closed");
}
