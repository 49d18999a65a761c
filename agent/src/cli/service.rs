//! `augur service apply|delete` (operator-signed catalog changes) and `augur services`.

use std::path::Path;

use anyhow::Context as _;
use augur_mesh::operator::OperatorCredential;
use augur_orchestrate::spec::ServiceSpec;

use super::client::Agent;
use crate::api::answers::{CatalogAnswer, CatalogChange, FleetDocument, ServiceList};
use crate::services::catalog::{FLEET_NAME, KIND_DELETE, KIND_FLEET, KIND_SPEC};

fn credential(path: &Path) -> anyhow::Result<OperatorCredential> {
    OperatorCredential::load(path).with_context(|| {
        format!(
            "cannot use the operator credential {}; create one with `augur fleet operator`",
            path.display()
        )
    })
}

async fn send(
    agent: &Agent,
    doc: augur_mesh::operator::SignedDocument,
) -> anyhow::Result<CatalogAnswer> {
    agent
        .post_json(
            "/v1/services",
            &CatalogChange {
                document: doc.to_string(),
            },
        )
        .await
}

fn print(answer: &CatalogAnswer, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
    } else {
        println!("{} v{}: {}", answer.name, answer.version, answer.outcome);
    }
    Ok(())
}

/// `augur service apply FILE`: checks the spec, signs it with the next version and sends it.
pub async fn apply(api: &str, file: &Path, cred: &Path, json: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let spec = ServiceSpec::from_toml(&text)
        .with_context(|| format!("{} is not a valid service spec", file.display()))?;
    let cred = credential(cred)?;
    let agent = Agent::new(api)?;
    let list: ServiceList = agent.get("/v1/services", &[]).await?;
    let version = list.versions.get(&spec.name).map_or(1, |v| v + 1);
    let answer = send(
        &agent,
        cred.sign(
            KIND_SPEC,
            &spec.name,
            version,
            text.into_bytes(),
            crate::sample::UnixMicros::now().as_unix_s(),
        ),
    )
    .await?;
    print(&answer, json)
}

/// `augur fleet apply FILE`: checks the fleet document, signs it with the next version and sends
/// it.
pub async fn apply_fleet(api: &str, file: &Path, cred: &Path, json: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    augur_orchestrate::fleet::FleetDoc::from_toml(&text)
        .with_context(|| format!("{} is not a valid fleet document", file.display()))?;
    let cred = credential(cred)?;
    let agent = Agent::new(api)?;
    let held: Option<FleetDocument> = agent.get("/v1/fleet", &[]).await.ok();
    let version = held.map_or(1, |h| h.version + 1);
    let answer = send(
        &agent,
        cred.sign(
            KIND_FLEET,
            FLEET_NAME,
            version,
            text.into_bytes(),
            crate::sample::UnixMicros::now().as_unix_s(),
        ),
    )
    .await?;
    print(&answer, json)
}

/// `augur autonomy`.
pub async fn autonomy(api: &str, json: bool) -> anyhow::Result<()> {
    let agent = Agent::new(api)?;
    let v: crate::api::http::AutonomyState = agent.get("/v1/autonomy", &[]).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "mode {:?}, dwell {}, takeover {}{}",
        v.settings.mode,
        humantime::format_duration(v.settings.dwell),
        humantime::format_duration(v.settings.takeover),
        if v.fleet_document {
            ""
        } else {
            " (no fleet document: nothing can move; `augur fleet apply`)"
        }
    );
    if v.cases.is_empty() {
        println!("no cases: nothing predicted to fail, no dead node with work, no orphaned move");
    }
    for r in &v.cases {
        let rank = if r.rank == usize::MAX {
            "not a candidate".to_owned()
        } else {
            format!("rank {}", r.rank)
        };
        println!(
            "{} {} on {} ({}): {:?}, {rank}{}",
            r.case.service,
            r.case.instance,
            r.case.node_name,
            r.case.trigger.name(),
            r.stage,
            if r.detail.is_empty() {
                String::new()
            } else {
                format!(" - {}", r.detail)
            }
        );
    }
    Ok(())
}

/// `augur leases`.
pub async fn leases(api: &str, json: bool) -> anyhow::Result<()> {
    let v: augur_mesh::leases::LeaseView = Agent::new(api)?.get("/v1/leases", &[]).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let Some(s) = &v.settings else {
        println!("no fleet document: leases are off (`augur fleet apply FILE` sets the voters)");
        return Ok(());
    };
    println!(
        "fleet document v{}: {} voter(s){}, at most {} move(s) at once ({} per zone), hold-down {}, lease {}",
        v.config_version.unwrap_or(0),
        s.voters.len(),
        if v.voter {
            ", this node one of them"
        } else {
            ""
        },
        s.max_migrations,
        s.max_migrations_per_zone,
        humantime::format_duration(s.hold_down),
        humantime::format_duration(s.duration),
    );
    if !v.held.is_empty() {
        println!();
        println!("{:<24} {:>8}  NOTE", "HELD BY THIS NODE", "EPOCH");
        for h in &v.held {
            println!("{:<24} {:>8}  {}", h.service, h.epoch, h.note);
        }
    }
    if !v.open.is_empty() {
        println!();
        println!(
            "{:<32} {:<54} {:>6} {:>10}",
            "OPEN IN THIS VOTER", "HOLDER", "EPOCH", "LEFT"
        );
        for o in &v.open {
            println!(
                "{:<32} {:<54} {:>6} {:>9.1}s",
                o.key,
                o.holder,
                o.round,
                o.remaining.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// `augur service delete NAME`.
pub async fn delete(api: &str, name: &str, cred: &Path, json: bool) -> anyhow::Result<()> {
    let cred = credential(cred)?;
    let agent = Agent::new(api)?;
    let list: ServiceList = agent.get("/v1/services", &[]).await?;
    let Some(held) = list.versions.get(name) else {
        anyhow::bail!("the catalog has no service {name:?}; `augur services` lists them");
    };
    let answer = send(
        &agent,
        cred.sign(
            KIND_DELETE,
            name,
            held + 1,
            Vec::new(),
            crate::sample::UnixMicros::now().as_unix_s(),
        ),
    )
    .await?;
    print(&answer, json)
}

/// `augur services`.
pub async fn list(api: &str, json: bool) -> anyhow::Result<()> {
    let list: ServiceList = Agent::new(api)?.get("/v1/services", &[]).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>7} {:>6} {:>8} {:<12}",
        "SERVICE", "VERSION", "PORT", "REPLICAS", "STRATEGY"
    );
    for s in &list.services {
        println!(
            "{:<24} {:>7} {:>6} {:>8} {:<12}",
            s.name,
            s.version,
            s.spec.port,
            s.spec.replicas,
            format!("{:?}", s.spec.strategy).to_lowercase()
        );
    }
    if !list.instances.is_empty() {
        println!();
        println!(
            "{:<24} {:<20} {:>7} {:<22} {:<10} {:<7}",
            "INSTANCE", "NODE", "VERSION", "ADDRESS", "HEALTH", "ROUTED"
        );
        for i in &list.instances {
            let routed = list
                .routes
                .services
                .get(&i.service)
                .is_some_and(|b| b.contains_key(&i.addr));
            println!(
                "{:<24} {:<20} {:>7} {:<22} {:<10} {:<7}",
                i.id,
                i.node,
                i.version,
                i.addr,
                i.health,
                if routed { "yes" } else { "no" }
            );
            if let Some(r) = &i.reason {
                println!("  {r}");
            }
        }
    }
    for p in &list.traffic_errors {
        println!("{} proxy for {}: {}", p.proxy, p.service, p.reason);
    }
    Ok(())
}
