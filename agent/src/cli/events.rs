//! `augur events`: a page of the agent's fleet events, or (with `--follow`) its server-sent stream.

use super::client::Agent;

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
    let print = |v: &serde_json::Value| {
        if json {
            println!("{v}");
        } else {
            let who = v["node_name"]
                .as_str()
                .unwrap_or_else(|| v["peer_id"].as_str().unwrap_or(""));
            let res = v["resource_id"]
                .as_str()
                .map(|r| format!(" {r}"))
                .unwrap_or_default();
            println!(
                "#{:<6} {:<28} {who}{res}",
                v["index"],
                v["topic"].as_str().unwrap_or("")
            );
        }
    };
    if !follow {
        let page: serde_json::Value = agent.get("/v1/events", &query).await?;
        if page["missed"].as_u64().unwrap_or(0) > 0 && !json {
            eprintln!(
                "({} earlier events were dropped from the agent's buffer)",
                page["missed"]
            );
        }
        for e in page["events"].as_array().into_iter().flatten() {
            print(e);
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
                let v: serde_json::Value = serde_json::from_str(d.trim()).unwrap_or_default();
                if kind == "missed" {
                    if json {
                        println!("{v}");
                    } else {
                        eprintln!(
                            "({} events were dropped before they could be sent)",
                            v["missed"]
                        );
                    }
                } else {
                    print(&v);
                }
            } else if line.is_empty() {
                kind.clear();
            }
        }
    }
    Ok(())
}
