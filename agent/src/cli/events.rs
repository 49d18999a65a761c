//! `augur events`: a page of the agent's fleet events, or (with `--follow`) its server-sent stream.

use anyhow::Context as _;

use super::client::Agent;
use crate::api::answers::Missed;
use crate::fleet::events::{Logged, Page};

/// `augur events`.
pub async fn run(
    api: &str,
    follow: bool,
    topics: &[String],
    since: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let agent = Agent::new(api)?;
    let since = since.map(|s| s.to_string());
    let mut query: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", t.as_str())).collect();
    if let Some(s) = &since {
        query.push(("since", s));
    }
    let print = |e: &Logged| -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(e)?);
        } else {
            let who = e.event.node_name.as_deref().unwrap_or(&e.event.peer_id);
            let res = e
                .event
                .resource_id
                .as_deref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default();
            println!("#{:<6} {:<28} {who}{res}", e.index, e.event.topic());
        }
        Ok(())
    };
    if !follow {
        let page: Page = agent.get("/v1/events", &query).await?;
        if page.missed > 0 && !json {
            eprintln!(
                "({} earlier events were dropped from the agent's buffer)",
                page.missed
            );
        }
        for e in &page.events {
            print(e)?;
        }
        return Ok(());
    }
    // Server-sent events: "event:", "id:" and "data:" lines, a blank line ends one.
    query.push(("follow", "true"));
    let resp = agent.stream("/v1/events", &query).await?;
    use futures::StreamExt as _;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut kind = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            let line = line.trim_end();
            if let Some(k) = line.strip_prefix("event:") {
                kind = k.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                if kind == "missed" {
                    let m: Missed = serde_json::from_str(d.trim()).context(
                        "the agent sent a `missed` notice this augur does not understand",
                    )?;
                    if json {
                        println!("{}", serde_json::to_string(&m)?);
                    } else {
                        eprintln!(
                            "({} events were dropped before they could be sent)",
                            m.missed
                        );
                    }
                } else {
                    let e: Logged = serde_json::from_str(d.trim()).context(
                        "the agent sent an event this augur does not understand (is it another version?)",
                    )?;
                    print(&e)?;
                }
            } else if line.is_empty() {
                kind.clear();
            }
        }
    }
    Ok(())
}
