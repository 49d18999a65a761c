//! `augur service apply|delete` (operator-signed catalog changes) and `augur services`.

use std::path::Path;

use anyhow::Context as _;
use augur_mesh::operator::OperatorCredential;
use augur_orchestrate::spec::ServiceSpec;

use super::client::Agent;
use crate::api::answers::{CatalogAnswer, CatalogChange, ServiceList};
use crate::services::catalog::{KIND_DELETE, KIND_SPEC};

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
