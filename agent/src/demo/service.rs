//! The demo's sample HTTP service (`augur demo-service`, run by the agents as a service
//! instance): answers `GET /` with its instance id and `GET /healthz`, pushes its own telemetry to
//! its node's API (`$AUGUR_API/v1/telemetry`) several times a second, as a workload does, and
//! takes a fault on `POST /fault?kind=K&seconds=S` (the demo injects it): from then on its
//! telemetry follows the fault's course and, at its end, it fails for real (exits, answers errors,
//! or stops answering). It exits when its agent dies (its parent process changes), as it would
//! with its host.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use parking_lot::Mutex;

use super::fault::{Behaviour, Fault, condition};

#[derive(Debug, Default)]
struct Injected {
    fault: Option<(Fault, Instant, Duration)>,
}

#[derive(Clone, Debug)]
struct Service {
    id: String,
    injected: Arc<Mutex<Injected>>,
    noise: Arc<Mutex<u64>>,
}

impl Service {
    /// Where its fault's course is now (`None`: no fault, or -1 before).
    fn now(&self) -> (Fault, f64) {
        match self.injected.lock().fault {
            Some((fault, at, length)) => (
                fault,
                at.elapsed().as_secs_f64() / length.as_secs_f64().max(1e-3),
            ),
            None => (Fault::None, -1.0),
        }
    }

    /// A number in [-1, 1] (splitmix64: seeded, no dependency on the OS's randomness).
    fn noise(&self) -> f64 {
        let mut s = self.noise.lock();
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    async fn answer(&self, health: bool) -> (StatusCode, String) {
        let (fault, f) = self.now();
        match condition(fault, f, 0.0).behaviour {
            Behaviour::Serve(d) if !health => {
                if !d.is_zero() {
                    tokio::time::sleep(d).await;
                }
                (StatusCode::OK, format!("{}\n", self.id))
            }
            Behaviour::Serve(_) => (StatusCode::OK, "ok\n".to_owned()),
            Behaviour::Exit => std::process::exit(137),
            Behaviour::Error(code) => (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                format!("{} failed ({})\n", self.id, fault.name()),
            ),
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                (StatusCode::GATEWAY_TIMEOUT, String::new())
            }
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Runs the service until its process ends.
pub async fn run() -> anyhow::Result<()> {
    let host: std::net::IpAddr = env("HOST")
        .and_then(|h| h.parse().ok())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let port: u16 = env("PORT").and_then(|p| p.parse().ok()).unwrap_or(8080);
    let id = env("AUGUR_INSTANCE").unwrap_or_else(|| "demo".to_owned());
    let service_name = env("AUGUR_SERVICE").unwrap_or_else(|| "demo".to_owned());
    let api = env("AUGUR_API");
    let speed: f64 = env("AUGUR_DEMO_SPEED")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let seed: u64 = env("AUGUR_DEMO_SEED")
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let svc = Service {
        id: id.clone(),
        injected: Arc::default(),
        noise: Arc::new(Mutex::new(
            seed ^ id
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b)),
        )),
    };
    let app = Router::new()
        .route(
            "/",
            get(|State(s): State<Service>| async move { s.answer(false).await }),
        )
        .route(
            "/healthz",
            get(|State(s): State<Service>| async move { s.answer(true).await }),
        )
        .route("/fault", post(inject))
        .fallback(get(|State(s): State<Service>| async move {
            s.answer(false).await
        }))
        .with_state(svc.clone());
    let listener = tokio::net::TcpListener::bind((host, port)).await?;
    // Its telemetry, `rate` samples a second, to its node's API.
    let tasks = tokio_util::task::TaskTracker::new();
    if let Some(api) = api {
        let svc = svc.clone();
        tasks.spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .build();
            let Ok(client) = client else { return };
            let url = format!("{api}/v1/telemetry");
            let every = Duration::from_secs_f64(1.0 / super::fault::rate(speed));
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (fault, f) = svc.now();
                let c = condition(fault, f, svc.noise());
                let ts = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                let line = serde_json::json!({
                    "ts": ts,
                    "resource_id": svc.id,
                    "resource_type": service_name,
                    "metrics": c.metrics,
                });
                let _ = client.post(&url).body(format!("{line}\n")).send().await;
            }
        });
    }
    // Gone with its agent (as with its host).
    let parent = std::os::unix::process::parent_id();
    tasks.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
        }
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn inject(
    State(s): State<Service>,
    Query(q): Query<BTreeMap<String, String>>,
) -> (StatusCode, String) {
    let Some(fault) = q.get("kind").and_then(|k| Fault::parse(k)) else {
        return (
            StatusCode::BAD_REQUEST,
            "kind: memory_leak, disk_fill, error_ramp, latency_creep, cpu_hog or none\n".into(),
        );
    };
    let seconds: f64 = q
        .get("seconds")
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(90.0);
    s.injected.lock().fault = Some((fault, Instant::now(), Duration::from_secs_f64(seconds)));
    (StatusCode::OK, format!("{} injected\n", fault.name()))
}
