//! Starting the mesh from the configuration (when it holds a join token), and applying a reloaded
//! `mesh.fleet_keys`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use augur_mesh::admission::{FleetPublicKey, JoinToken, Trust};
use augur_mesh::membership::MembershipConfig;
use augur_mesh::{Clock, Mesh, MeshConfig, Multiaddr, NodeIdentity, Tasks};

use crate::config::Config;
use crate::sample::UnixMicros;

fn quic_addr(a: SocketAddr) -> Multiaddr {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => format!("/ip4/{v4}"),
        std::net::IpAddr::V6(v6) => format!("/ip6/{v6}"),
    };
    format!("{ip}/udp/{}/quic-v1", a.port())
        .parse()
        .unwrap_or_else(|_| Multiaddr::empty())
}

pub fn parse_fleet_keys(keys: &[String]) -> anyhow::Result<Vec<FleetPublicKey>> {
    keys.iter()
        .map(|k| k.parse())
        .collect::<Result<_, _>>()
        .context("mesh.fleet_keys")
}

/// Applies a reloaded `mesh.fleet_keys`: peers whose token no key trusts any longer are
/// disconnected within a second (see docs/ARCHITECTURE.md). Returns whether the keys changed.
pub fn reload_fleet_keys(mesh: &Mesh, keys: &[String]) -> anyhow::Result<bool> {
    let keys = parse_fleet_keys(keys)?;
    if *mesh.trust.keys() == keys {
        return Ok(false);
    }
    mesh.trust.set(keys);
    Ok(true)
}

/// Starts the mesh when the configuration holds a join token; `None` when it does not.
pub async fn start(
    cfg: &Config,
    identity: &NodeIdentity,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    tasks: &Tasks,
) -> anyhow::Result<Option<Mesh>> {
    let m = &cfg.mesh;
    let token_text = match (&m.join_token, &m.join_token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read mesh.join_token_file {}", f.display()))?,
        (None, None) => return Ok(None),
    };
    let token: JoinToken = token_text
        .parse()
        .context("mesh.join_token is not a join token; issue one with `augur fleet token`")?;
    let trusted = parse_fleet_keys(&m.fleet_keys)?;
    token
        .verify(&identity.peer_id(), &trusted, UnixMicros::now().as_unix_s())
        .with_context(|| {
            format!(
                "this node ({}) cannot join the fleet with its token; issue it a new one with \
                 `augur fleet token --peer-id {}`",
                identity.peer_id(),
                identity.peer_id()
            )
        })?;
    let mut mc = MembershipConfig::new(m.fleet_name.clone(), m.gossip_addr);
    mc.advertise_addr = m.advertise_addr.unwrap_or(m.gossip_addr);
    mc.seeds = m.seeds.clone();
    mc.gossip_interval = m.gossip_interval;
    mc.phi_threshold = m.phi_threshold;
    mc.dead_node_grace = m.dead_node_grace;
    mc.max_nodes = m.max_members;
    // A peer that answered a ping within two ping intervals (and a second) is not dead.
    mc.ping_witness = m.ping_interval * 2 + Duration::from_secs(1);
    mc.generation = UnixMicros::now().as_unix_us();
    let mesh = Mesh::start(
        identity.keypair().clone(),
        token,
        Trust::new(trusted),
        MeshConfig {
            membership: mc,
            p2p_listen: vec![quic_addr(m.p2p_addr)],
            admission_timeout: m.admission_timeout,
            ping_interval: m.ping_interval,
            api_http: Some(http_addr.to_string()),
            api_grpc: Some(grpc_addr.to_string()),
            memory: None,
        },
        Clock::system(),
        tasks,
    )
    .await
    .with_context(|| {
        format!(
            "cannot start the mesh on {} (gossip) and {} (QUIC); set mesh.gossip_addr / mesh.p2p_addr",
            m.gossip_addr, m.p2p_addr
        )
    })?;
    Ok(Some(mesh))
}
