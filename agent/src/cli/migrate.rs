//! `augur migrate` (an operator-signed migration request, optionally waited for with its steps
//! shown) and `augur migrations`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use augur_mesh::operator::OperatorCredential;
use augur_orchestrate::migration::{Outcome, Phase};

use super::client::Agent;
use crate::api::answers::CatalogChange;
use crate::api::migrations::KIND_MIGRATION;
use crate::migrate::executor::{Journal, MigrationRequest};

fn outcome_text(j: &Journal) -> String {
    match j.outcome() {
        Some(Outcome::Completed) => "completed".into(),
        Some(Outcome::Refused { reason }) => format!("refused: {reason}"),
        Some(Outcome::RolledBack { step, reason }) => {
            format!("rolled back at {}: {reason}", step.as_str())
        }
        Some(Outcome::Abandoned { step, reason }) => {
            format!("abandoned at {}: {reason}", step.as_str())
        }
        None => match &j.record.phase {
            Phase::Forward { step, .. } => format!("at {}", step.as_str()),
            Phase::RollingBack { from, .. } => format!("rolling back from {}", from.as_str()),
            Phase::Resuming { at } => format!("resuming at {}", at.as_str()),
            Phase::Finished(_) => "finished".into(),
        },
    }
}

/// `augur migrate SERVICE ...`.
pub async fn migrate(
    api: &str,
    req: MigrationRequest,
    cred: &Path,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let cred = OperatorCredential::load(cred).with_context(|| {
        format!(
            "cannot use the operator credential {}; create one with `augur fleet operator`",
            cred.display()
        )
    })?;
    let agent = Agent::new(api)?;
    let doc = cred.sign(
        KIND_MIGRATION,
        &req.service,
        1,
        serde_json::to_vec(&req)?,
        crate::sample::UnixMicros::now().as_unix_s(),
    );
    let started: Journal = agent
        .post_json(
            "/orchestrate_migration",
            &CatalogChange {
                document: doc.to_string(),
            },
        )
        .await?;
    let p = &started.record.plan;
    if !wait {
        if json {
            return super::print_json(&started);
        }
        println!(
            "{}: moving {} from {} to {} ({}), epoch {}; `augur migrations {}` follows it",
            started.id,
            p.old.instance,
            p.old.node,
            p.new.node,
            serde_json::to_value(p.strategy)?.as_str().unwrap_or(""),
            started.record.epoch,
            started.id
        );
        return Ok(());
    }
    let pb = super::spinner("migrating");
    let mut shown = 0;
    let path = format!("/v1/migrations/{}", started.id);
    let last = loop {
        let j: Journal = agent.get(&path, &[]).await?;
        for l in j.record.log.iter().skip(shown) {
            pb.suspend(|| {
                if !json {
                    println!("{:>8.1}s  {:<9} {}", l.at.as_secs_f64(), l.step, l.note);
                }
            });
        }
        shown = j.record.log.len();
        pb.set_message(outcome_text(&j));
        if j.outcome().is_some() {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    pb.finish_and_clear();
    if json {
        super::print_json(&last)?;
    } else {
        println!("{}: {}", last.id, outcome_text(&last));
    }
    match last.outcome() {
        Some(Outcome::Completed) => Ok(()),
        _ => anyhow::bail!("the migration did not complete: {}", outcome_text(&last)),
    }
}

/// `augur migrations ID --cancel`.
pub async fn cancel(api: &str, id: &str, cred: &Path, json: bool) -> anyhow::Result<()> {
    let cred = OperatorCredential::load(cred).with_context(|| {
        format!(
            "cannot use the operator credential {}; create one with `augur fleet operator`",
            cred.display()
        )
    })?;
    let doc = cred.sign(
        crate::api::migrations::KIND_CANCEL,
        id,
        1,
        b"cancelled by the operator".to_vec(),
        crate::sample::UnixMicros::now().as_unix_s(),
    );
    let j: Journal = Agent::new(api)?
        .post_json(
            &format!("/v1/migrations/{id}/cancel"),
            &CatalogChange {
                document: doc.to_string(),
            },
        )
        .await?;
    if json {
        return super::print_json(&j);
    }
    println!("{}: cancelled; rolling back ({})", j.id, outcome_text(&j));
    Ok(())
}

/// `augur migrations [ID]`.
pub async fn list(api: &str, id: Option<&str>, json: bool) -> anyhow::Result<()> {
    let agent = Agent::new(api)?;
    if let Some(id) = id {
        let j: Journal = agent.get(&format!("/v1/migrations/{id}"), &[]).await?;
        if json {
            return super::print_json(&j);
        }
        let p = &j.record.plan;
        println!(
            "{}  {} {} -> {} ({:?}), epoch {}: {}",
            j.id,
            p.service,
            p.old.node,
            p.new.node,
            p.strategy,
            j.record.epoch,
            outcome_text(&j)
        );
        for l in &j.record.log {
            println!("{:>8.1}s  {:<9} {}", l.at.as_secs_f64(), l.step, l.note);
        }
        return Ok(());
    }
    let all: Vec<Journal> = agent.get("/v1/migrations", &[]).await?;
    if json {
        return super::print_json(&all);
    }
    println!(
        "{:<14} {:<16} {:<13} {:<16} {:<16} {:>6}  STATE",
        "ID", "SERVICE", "STRATEGY", "FROM", "TO", "EPOCH"
    );
    for j in &all {
        let p = &j.record.plan;
        println!(
            "{:<14} {:<16} {:<13} {:<16} {:<16} {:>6}  {}",
            j.id,
            p.service,
            serde_json::to_value(p.strategy)?.as_str().unwrap_or(""),
            p.old.node,
            p.new.node,
            j.record.epoch,
            outcome_text(j)
        );
    }
    Ok(())
}
