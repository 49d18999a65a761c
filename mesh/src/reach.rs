//! Whether a peer's libp2p endpoint answers over QUIC, from a throwaway identity (`augur doctor`):
//! the QUIC and TLS handshakes complete, or why not. A node's admission happens after the
//! handshake (the token exchange), so a stranger's dial proves the path and the port, not
//! membership; nothing is sent but the handshake, and the connection is closed at once.

use std::time::Duration;

use futures::StreamExt as _;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, ping};

/// Dials `addr` over QUIC with a fresh identity; returns the PeerId that answered, or why the dial
/// failed (or that nothing answered within `timeout`).
pub async fn quic_handshake(addr: Multiaddr, timeout: Duration) -> Result<PeerId, String> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| ping::Behaviour::default())
        .map_err(|e| format!("cannot build a QUIC client: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(1)))
        .build();
    swarm
        .dial(addr.clone())
        .map_err(|e| format!("cannot dial {addr}: {e}"))?;
    let outcome = tokio::time::timeout(timeout, async {
        while let Some(ev) = swarm.next().await {
            match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(error.to_string());
                }
                _ => {}
            }
        }
        Err("the dialer stopped".to_owned())
    })
    .await
    .unwrap_or_else(|_| Err(format!("no QUIC answer within {timeout:?}")));
    drop(swarm);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_port_times_out_and_a_listener_answers_with_its_peer_id() {
        // Nothing listens here (a UDP socket held and never read): no answer.
        let quiet = std::net::UdpSocket::bind("127.0.0.1:0").expect("binds");
        let port = quiet.local_addr().expect("addr").port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
            .parse()
            .expect("multiaddr");
        let r = quic_handshake(addr, Duration::from_millis(500)).await;
        assert!(r.is_err(), "{r:?}");

        // A libp2p QUIC listener answers.
        let mut listener = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_quic()
            .with_behaviour(|_| ping::Behaviour::default())
            .expect("behaviour")
            .build();
        let id = *listener.local_peer_id();
        listener
            .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr"))
            .expect("listens");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = listener.select_next_some().await {
                break address;
            }
        };
        let serve = tokio::spawn(async move {
            loop {
                listener.select_next_some().await;
            }
        });
        let r = quic_handshake(addr, Duration::from_secs(5)).await;
        assert_eq!(r, Ok(id));
        serve.abort();
    }
}
