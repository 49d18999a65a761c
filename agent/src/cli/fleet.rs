//! `augur fleet ...`: create a fleet key, issue join tokens, print a node's PeerId.

use anyhow::{Context as _, bail};
use augur_mesh::NodeIdentity;
use augur_mesh::admission::FleetKey;
use augur_mesh::operator::{OperatorCredential, Role};

use super::FleetCommand;
use crate::config::Config;
use crate::sample::UnixMicros;

/// `augur fleet ...`.
pub fn run(cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Init { out, json } => {
            let key = FleetKey::create(&out)?;
            let public = key.public().to_string();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"fleet_key_file": out, "fleet_public_key": public, "fleet_id": key.public().fleet_id()})
                );
            } else {
                println!(
                    "fleet key written to {} (keep it secret, and off the fleet's hosts)",
                    out.display()
                );
                println!("fleet public key: {public}");
                println!();
                println!("Every node trusts it:   [mesh] fleet_keys = [\"{public}\"]");
                println!(
                    "Each node needs a token: augur fleet token --fleet-key {} --peer-id <its PeerId>",
                    out.display()
                );
                println!(
                    "(a node prints its PeerId with `augur fleet peer-id --data-dir <its data dir>`)"
                );
            }
            Ok(())
        }
        FleetCommand::Token {
            fleet_key,
            peer_id,
            data_dir,
            ttl,
            json,
        } => {
            let key = FleetKey::load(&fleet_key)
                .with_context(|| "create one with `augur fleet init`".to_owned())?;
            let peer = match (peer_id, data_dir) {
                (Some(p), _) => p
                    .parse()
                    .with_context(|| format!("{p:?} is not a PeerId"))?,
                (None, Some(dir)) => {
                    std::fs::create_dir_all(&dir)?;
                    NodeIdentity::load_or_create(&dir)?.peer_id()
                }
                (None, None) => bail!("give the node's --peer-id, or its --data-dir"),
            };
            let expires = UnixMicros::now().as_unix_s() + ttl.as_secs();
            let token = key.issue(peer, expires);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"peer_id": peer.to_string(), "expires_unix_s": expires, "join_token": token.to_string(), "fleet_public_key": key.public().to_string()})
                );
            } else {
                println!("{token}");
            }
            Ok(())
        }
        FleetCommand::Operator {
            fleet_key,
            out,
            ttl,
            json,
        } => {
            let key = FleetKey::load(&fleet_key)
                .with_context(|| "create one with `augur fleet init`".to_owned())?;
            let expires = UnixMicros::now().as_unix_s() + ttl.as_secs();
            let cred = OperatorCredential::create(&key, Role::Operator, expires);
            cred.save(&out)
                .with_context(|| format!("cannot write the credential to {}", out.display()))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"operator_credential_file": out, "role": "operator", "expires_unix_s": expires, "fleet_id": key.public().fleet_id()})
                );
            } else {
                println!(
                    "operator credential written to {} (valid until unix {expires}; keep it off the fleet's hosts)",
                    out.display()
                );
            }
            Ok(())
        }
        FleetCommand::Apply { .. } => {
            anyhow::bail!("`augur fleet apply` talks to an agent; it is run by the client")
        }
        FleetCommand::PeerId { data_dir, json } => {
            let dir = data_dir.unwrap_or_else(|| Config::default().data_dir());
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let id = NodeIdentity::load_or_create(&dir)?.peer_id();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"peer_id": id.to_string(), "data_dir": dir})
                );
            } else {
                println!("{id}");
            }
            Ok(())
        }
    }
}
