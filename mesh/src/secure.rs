//! Authenticated, encrypted gossip datagrams (DESIGN.md decision 1: chitchat has no
//! authentication, so every datagram is checked as coming from an admitted node before chitchat
//! parses it).
//!
//! Keys. Every node's ed25519 identity (the key its PeerId names) doubles as an X25519 key (the
//! standard birational map, as libsodium's `crypto_sign_ed25519_*_to_curve25519`). Two nodes
//! that know each other's PeerIds share a static Diffie-Hellman secret without a round trip; each
//! direction gets its own ChaCha20-Poly1305 key, HKDF-SHA256 of that secret bound to the fleet and
//! to both PeerIds in order. Nothing is accepted from a PeerId without a join token that the
//! trusted fleet keys admit, checked again (expiry, trust) every time the session is used.
//!
//! Frames (first byte [`FRAME_VERSION`], second the kind):
//! - `DATA`: sender key id (8) | counter (8) | ciphertext+tag. The header is the associated data.
//! - `HELLO_DATA`: hello | sender key id | counter | ciphertext+tag: as `DATA`, with the sender's
//!   hello (join token and advertised gossip address) in the authenticated header, sent until the
//!   peer has shown, by any authenticated frame of its own, that it knows the sender.
//! - `PROBE`: hello | unix ms | ed25519 signature: how a node reaches a seed whose PeerId it does not
//!   know yet. It carries no gossip; a valid one is answered, at the prober's *signed* address
//!   (never the datagram's source, which an attacker can forge), with an empty `HELLO_DATA`.
//!
//! Counters are per (sender, receiver) pair, start at the sender's wall clock in microseconds (so
//! they keep growing across restarts) and are checked against a 64-frame sliding window: a frame
//! replayed, by anyone, is dropped. Honest nodes send only to addresses bound to an admitted PeerId
//! (by its hello or by its signed membership values) and probe only configured seeds, so nothing
//! an outsider sends can make them send anywhere else.
//!
//! Everything here is synchronous and without I/O; [`SecureTransport`] is the thin chitchat
//! transport around it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use hkdf::Hkdf;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use sha2::{Digest as _, Sha256};

use crate::admission::{JoinToken, Trust, public_key_of};
use crate::clock::Clock;
use crate::datagram::{DatagramSocket, Datagrams, MAX_DATAGRAM};
use crate::transport::GossipTraffic;

/// The first byte of every augur gossip frame.
pub const FRAME_VERSION: u8 = 0xA7;
const KIND_DATA: u8 = 1;
const KIND_HELLO_DATA: u8 = 2;
const KIND_PROBE: u8 = 3;
const KID_LEN: usize = 8;
const CTR_LEN: usize = 8;
const TAG_LEN: usize = 16;
const SIG_LEN: usize = 64;
const PROBE_DOMAIN: &[u8] = b"augur/gossip-probe/v1\0";
const KDF_SALT: &[u8] = b"augur/gossip/v1";
/// Frames a receiver may see out of order before an older one is refused.
const REPLAY_WINDOW: u64 = 64;

/// Why a frame was dropped (each counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// Not an augur frame, truncated, or with fields out of range.
    Malformed,
    /// A data frame from a key id this node has no session with.
    UnknownSender,
    /// The authentication tag did not verify: forged, corrupted or for another node.
    BadTag,
    /// A counter already seen or older than the window.
    Replayed,
    /// A hello whose token does not admit its node (untrusted fleet key, expired, bad signature,
    /// or for another PeerId), or a session whose token has expired or lost its trust.
    Unadmitted,
    /// A probe signed too long ago or in the future, or with a bad signature.
    BadProbe,
    /// Handshakes (token and probe checks, key agreement) beyond the per-second budget.
    RateLimited,
    /// A decrypted message that chitchat could not decode (sent by an admitted node).
    BadMessage,
    /// Too many sessions (the cap on admitted peers).
    TooManyPeers,
    /// Outgoing: an address bound to no admitted node and not a seed (never sent to).
    Unbound,
    /// Outgoing: a frame longer than a datagram.
    Oversize,
}

impl Dropped {
    pub const ALL: [Dropped; 11] = [
        Dropped::Malformed,
        Dropped::UnknownSender,
        Dropped::BadTag,
        Dropped::Replayed,
        Dropped::Unadmitted,
        Dropped::BadProbe,
        Dropped::RateLimited,
        Dropped::BadMessage,
        Dropped::TooManyPeers,
        Dropped::Unbound,
        Dropped::Oversize,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Malformed => "malformed",
            Dropped::UnknownSender => "unknown_sender",
            Dropped::BadTag => "bad_tag",
            Dropped::Replayed => "replayed",
            Dropped::Unadmitted => "unadmitted",
            Dropped::BadProbe => "bad_probe",
            Dropped::RateLimited => "rate_limited",
            Dropped::BadMessage => "bad_message",
            Dropped::TooManyPeers => "too_many_peers",
            Dropped::Unbound => "unbound_destination",
            Dropped::Oversize => "oversize",
        }
    }

    /// Whether this is about a datagram that arrived (as opposed to one this node did not send).
    pub fn is_incoming(self) -> bool {
        !matches!(self, Dropped::Unbound | Dropped::Oversize)
    }
}

/// Counters of the secure gossip layer.
#[derive(Debug, Default)]
pub struct SecureStats {
    dropped: [AtomicU64; 11],
    pub probes_sent: AtomicU64,
    pub probes_answered: AtomicU64,
    pub hellos_sent: AtomicU64,
    pub sessions: AtomicU64,
    /// Sessions ended because their token expired or its fleet key was no longer trusted.
    pub sessions_revoked: AtomicU64,
}

impl SecureStats {
    fn drop(&self, d: Dropped) {
        if let Some(i) = Dropped::ALL.iter().position(|x| *x == d) {
            self.dropped[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frames dropped, by reason.
    pub fn dropped(&self) -> Vec<(Dropped, u64)> {
        Dropped::ALL
            .iter()
            .zip(&self.dropped)
            .map(|(d, c)| (*d, c.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn dropped_incoming(&self) -> u64 {
        self.dropped()
            .into_iter()
            .filter(|(d, _)| d.is_incoming())
            .map(|(_, n)| n)
            .sum()
    }

    pub fn count(&self, d: Dropped) -> u64 {
        Dropped::ALL
            .iter()
            .position(|x| *x == d)
            .map_or(0, |i| self.dropped[i].load(Ordering::Relaxed))
    }
}

/// Settings of the secure layer.
#[derive(Clone, Debug)]
pub struct SecureConfig {
    /// Binds keys and probes to one fleet.
    pub fleet_id: String,
    /// This node's advertised gossip address (carried in its hello).
    pub advertise: SocketAddr,
    /// The only addresses probed without a known PeerId.
    pub seeds: Vec<SocketAddr>,
    /// How far a probe's timestamp may be from this node's clock.
    pub max_probe_skew_ms: u64,
    /// Token checks, probe signatures and key agreements allowed per second (a flood of forged
    /// hellos costs at most this much CPU; ~100 us each).
    pub handshakes_per_s: u32,
    /// At most this many peers hold a session.
    pub max_peers: usize,
    /// A probe to one seed, or a probe answer to one peer, at most this often.
    pub probe_every_ms: u64,
}

impl SecureConfig {
    pub fn new(fleet_id: String, advertise: SocketAddr) -> Self {
        Self {
            fleet_id,
            advertise,
            seeds: Vec::new(),
            max_probe_skew_ms: 60_000,
            handshakes_per_s: 200,
            max_peers: 4096,
            probe_every_ms: 1000,
        }
    }
}

/// A sliding window of counters seen from one sender.
#[derive(Clone, Copy, Debug, Default)]
struct ReplayWindow {
    max: u64,
    seen: u64,
}

impl ReplayWindow {
    fn fresh(&self, c: u64) -> bool {
        if c > self.max {
            return true;
        }
        let d = self.max - c;
        d < REPLAY_WINDOW && self.seen & (1 << d) == 0 && !(self.max == 0 && c == 0)
    }

    fn mark(&mut self, c: u64) {
        if c > self.max {
            let shift = c - self.max;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.max = c;
        } else {
            self.seen |= 1 << (self.max - c);
        }
    }
}

type KeyId = [u8; KID_LEN];

fn key_id(peer: &PeerId) -> KeyId {
    let h = Sha256::digest(peer.to_bytes());
    let mut out = [0u8; KID_LEN];
    out.copy_from_slice(&h[..KID_LEN]);
    out
}

/// The X25519 public key of an ed25519 PeerId.
fn x25519_public(peer: &PeerId) -> Option<x25519_dalek::PublicKey> {
    let ed = public_key_of(peer)?.try_into_ed25519().ok()?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&ed.to_bytes()).ok()?;
    Some(x25519_dalek::PublicKey::from(vk.to_montgomery().to_bytes()))
}

struct PeerEntry {
    peer: PeerId,
    token: Vec<u8>,
    fleet: crate::admission::FleetPublicKey,
    expires_s: u64,
    tx: ChaCha20Poly1305,
    rx: ChaCha20Poly1305,
    tx_counter: u64,
    window: ReplayWindow,
    /// The peer sent a `DATA` frame: it knows this node, so no hello is attached.
    confirmed: bool,
    /// Its advertised address (from its hello or signed values) and the last source it sent from.
    advertised: Option<SocketAddr>,
    source: Option<SocketAddr>,
    last_answer_ms: Option<u64>,
}

struct Inner {
    peers: HashMap<KeyId, PeerEntry>,
    by_addr: HashMap<SocketAddr, KeyId>,
    probed: HashMap<SocketAddr, u64>,
    bucket: f64,
    bucket_at_ms: u64,
}

/// What an arriving frame gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// A chitchat message from an admitted peer.
    Message { peer: PeerId, bytes: Vec<u8> },
    /// Nothing for chitchat, but a frame to send (the answer to a probe).
    Reply { to: SocketAddr, frame: Vec<u8> },
    /// Authentic, nothing to do (an empty hello).
    Nothing,
}

/// This node's sessions with admitted peers. Shared by the gossip socket and the membership
/// task (which tells it the addresses of members it admitted).
pub struct Sessions {
    config: SecureConfig,
    peer: PeerId,
    kid: KeyId,
    secret: x25519_dalek::StaticSecret,
    keypair: Keypair,
    hello: Vec<u8>,
    trust: Trust,
    clock: Clock,
    inner: parking_lot::Mutex<Inner>,
    pub stats: SecureStats,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sessions({}, {} peers)",
            self.peer,
            self.inner.lock().peers.len()
        )
    }
}

/// The hello: join token and advertised address, length-prefixed.
fn encode_hello(token: &[u8], addr: SocketAddr) -> Vec<u8> {
    let a = addr.to_string();
    let mut out = Vec::with_capacity(3 + token.len() + a.len());
    out.extend_from_slice(&(token.len() as u16).to_be_bytes());
    out.extend_from_slice(token);
    out.push(a.len() as u8);
    out.extend_from_slice(a.as_bytes());
    out
}

fn decode_hello(b: &[u8]) -> Option<(&[u8], SocketAddr)> {
    let tl = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let token = b.get(2..2 + tl)?;
    let al = *b.get(2 + tl)? as usize;
    let addr = std::str::from_utf8(b.get(3 + tl..3 + tl + al)?).ok()?;
    if b.len() != 3 + tl + al {
        return None;
    }
    Some((token, addr.parse().ok()?))
}

/// Splits `[len u16][bytes]` off the front.
fn take_prefixed(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let l = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    Some((b.get(2..2 + l)?, b.get(2 + l..)?))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::from(n)
}

impl Sessions {
    /// Sessions for this node. Fails only when the keypair is not ed25519.
    pub fn new(
        keypair: &Keypair,
        token: &JoinToken,
        trust: Trust,
        clock: Clock,
        config: SecureConfig,
    ) -> Option<Self> {
        let ed = keypair.clone().try_into_ed25519().ok()?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(ed.secret().as_ref());
        let scalar = ed25519_dalek::SigningKey::from_bytes(&seed).to_scalar_bytes();
        let peer = keypair.public().to_peer_id();
        let hello = encode_hello(&token.to_bytes(), config.advertise);
        let now = clock.now_ms();
        Some(Self {
            kid: key_id(&peer),
            peer,
            secret: x25519_dalek::StaticSecret::from(scalar),
            keypair: keypair.clone(),
            hello,
            trust,
            inner: parking_lot::Mutex::new(Inner {
                peers: HashMap::new(),
                by_addr: HashMap::new(),
                probed: HashMap::new(),
                bucket: f64::from(config.handshakes_per_s),
                bucket_at_ms: now,
            }),
            clock,
            config,
            stats: SecureStats::default(),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// Peers with a session.
    pub fn peers(&self) -> Vec<PeerId> {
        self.inner.lock().peers.values().map(|e| e.peer).collect()
    }

    /// The directional keys with `peer`; `None` for a key that does not agree (low order).
    fn pair_keys(&self, peer: &PeerId) -> Option<(ChaCha20Poly1305, ChaCha20Poly1305)> {
        let shared = self.secret.diffie_hellman(&x25519_public(peer)?);
        if !shared.was_contributory() {
            return None;
        }
        let hk = Hkdf::<Sha256>::new(Some(KDF_SALT), shared.as_bytes());
        let key = |from: &PeerId, to: &PeerId| {
            let mut info = self.config.fleet_id.as_bytes().to_vec();
            info.push(0);
            info.extend_from_slice(&from.to_bytes());
            info.push(0);
            info.extend_from_slice(&to.to_bytes());
            let mut k = [0u8; 32];
            hk.expand(&info, &mut k).ok()?;
            Some(ChaCha20Poly1305::new(&Key::from(k)))
        };
        Some((key(&self.peer, peer)?, key(peer, &self.peer)?))
    }

    /// Takes one handshake from the budget.
    fn spend(inner: &mut Inner, rate: u32, now_ms: u64) -> bool {
        let rate = f64::from(rate);
        let dt = now_ms.saturating_sub(inner.bucket_at_ms) as f64 / 1000.0;
        inner.bucket = (inner.bucket + dt * rate).min(rate);
        inner.bucket_at_ms = now_ms;
        if inner.bucket >= 1.0 {
            inner.bucket -= 1.0;
            true
        } else {
            false
        }
    }

    /// A session with the node whose token is `token_bytes` (verified here unless it is the one
    /// the session already holds).
    fn admit(&self, inner: &mut Inner, token_bytes: &[u8], now_ms: u64) -> Result<KeyId, Dropped> {
        let token = JoinToken::from_bytes(token_bytes).map_err(|_| Dropped::Malformed)?;
        let kid = key_id(&token.peer);
        if token.peer == self.peer {
            return Err(Dropped::Unadmitted);
        }
        if let Some(e) = inner.peers.get(&kid)
            && e.token == token_bytes
        {
            return Ok(kid);
        }
        if !self.trust.trusts(&token.fleet) {
            return Err(Dropped::Unadmitted);
        }
        if !Self::spend(inner, self.config.handshakes_per_s, now_ms) {
            return Err(Dropped::RateLimited);
        }
        self.trust
            .verify(&token, &token.peer, now_ms / 1000)
            .map_err(|_| Dropped::Unadmitted)?;
        self.install(inner, &token, token_bytes.to_vec(), now_ms)?;
        Ok(kid)
    }

    fn install(
        &self,
        inner: &mut Inner,
        token: &JoinToken,
        token_bytes: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), Dropped> {
        let kid = key_id(&token.peer);
        if let Some(e) = inner.peers.get_mut(&kid) {
            // A renewed token for a known peer: keys are the same, the credential is new.
            e.token = token_bytes;
            e.fleet = token.fleet.clone();
            e.expires_s = token.expires_unix_s;
            return Ok(());
        }
        if inner.peers.len() >= self.config.max_peers {
            return Err(Dropped::TooManyPeers);
        }
        let (tx, rx) = self.pair_keys(&token.peer).ok_or(Dropped::Unadmitted)?;
        inner.peers.insert(
            kid,
            PeerEntry {
                peer: token.peer,
                token: token_bytes,
                fleet: token.fleet.clone(),
                expires_s: token.expires_unix_s,
                tx,
                rx,
                tx_counter: now_ms.saturating_mul(1000),
                window: ReplayWindow::default(),
                confirmed: false,
                advertised: None,
                source: None,
                last_answer_ms: None,
            },
        );
        self.stats
            .sessions
            .store(inner.peers.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Whether a session still stands (token unexpired, fleet key still trusted); ends it if not.
    fn still_admitted(&self, inner: &mut Inner, kid: &KeyId, now_ms: u64) -> bool {
        let Some(e) = inner.peers.get(kid) else {
            return false;
        };
        if now_ms / 1000 < e.expires_s && self.trust.trusts(&e.fleet) {
            return true;
        }
        self.forget(inner, kid);
        self.stats.sessions_revoked.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn forget(&self, inner: &mut Inner, kid: &KeyId) {
        if let Some(e) = inner.peers.remove(kid) {
            for a in [e.advertised, e.source].into_iter().flatten() {
                if inner.by_addr.get(&a) == Some(kid) {
                    inner.by_addr.remove(&a);
                }
            }
        }
        self.stats
            .sessions
            .store(inner.peers.len() as u64, Ordering::Relaxed);
    }

    fn bind(inner: &mut Inner, kid: KeyId, addr: SocketAddr, advertised: bool) {
        let Some(e) = inner.peers.get_mut(&kid) else {
            return;
        };
        let slot = if advertised {
            &mut e.advertised
        } else {
            &mut e.source
        };
        if *slot == Some(addr) {
            return;
        }
        let old = slot.replace(addr);
        let other = if advertised { e.source } else { e.advertised };
        if let Some(old) = old
            && other != Some(old)
            && inner.by_addr.get(&old) == Some(&kid)
        {
            inner.by_addr.remove(&old);
        }
        inner.by_addr.insert(addr, kid);
    }

    /// Tells the sessions about a member the membership layer admitted (token verified there),
    /// with the gossip address its signed values give.
    pub fn learn(&self, token: &JoinToken, addr: SocketAddr) {
        if token.peer == self.peer {
            return;
        }
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let kid = key_id(&token.peer);
        let known = inner
            .peers
            .get(&kid)
            .is_some_and(|e| e.advertised == Some(addr) && e.expires_s == token.expires_unix_s);
        if known {
            return;
        }
        if self
            .install(&mut inner, token, token.to_bytes(), now)
            .is_ok()
        {
            Self::bind(&mut inner, kid, addr, true);
        }
    }

    /// Ends every session whose token expired or whose fleet key is no longer trusted; returns
    /// how many ended.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let kids: Vec<KeyId> = inner.peers.keys().copied().collect();
        kids.iter()
            .filter(|k| !self.still_admitted(&mut inner, k, now))
            .count()
    }

    /// The frame that carries `payload` to `to`, or why nothing is sent.
    pub fn seal(&self, to: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, Dropped> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let kid = inner.by_addr.get(&to).copied();
        let Some(kid) = kid.filter(|k| self.still_admitted(&mut inner, k, now)) else {
            return self.probe(&mut inner, to, now);
        };
        let Some(e) = inner.peers.get_mut(&kid) else {
            return Err(Dropped::Unbound);
        };
        e.tx_counter = e.tx_counter.max(now.saturating_mul(1000)) + 1;
        let counter = e.tx_counter;
        let mut frame = Vec::with_capacity(payload.len() + self.hello.len() + 64);
        frame.push(FRAME_VERSION);
        if e.confirmed {
            frame.push(KIND_DATA);
        } else {
            frame.push(KIND_HELLO_DATA);
            frame.extend_from_slice(&(self.hello.len() as u16).to_be_bytes());
            frame.extend_from_slice(&self.hello);
            self.stats.hellos_sent.fetch_add(1, Ordering::Relaxed);
        }
        frame.extend_from_slice(&self.kid);
        frame.extend_from_slice(&counter.to_be_bytes());
        let ct =
            e.tx.encrypt(
                &nonce(counter),
                Payload {
                    msg: payload,
                    aad: &frame,
                },
            )
            .map_err(|_| Dropped::Oversize)?;
        frame.extend_from_slice(&ct);
        if frame.len() > MAX_DATAGRAM {
            return Err(Dropped::Oversize);
        }
        Ok(frame)
    }

    /// A probe to a seed whose PeerId this node does not know; other addresses get nothing.
    fn probe(&self, inner: &mut Inner, to: SocketAddr, now: u64) -> Result<Vec<u8>, Dropped> {
        if !self.config.seeds.contains(&to) {
            return Err(Dropped::Unbound);
        }
        if inner
            .probed
            .get(&to)
            .is_some_and(|t| now < t + self.config.probe_every_ms)
        {
            return Err(Dropped::Unbound);
        }
        inner.probed.insert(to, now);
        let mut frame = vec![FRAME_VERSION, KIND_PROBE];
        frame.extend_from_slice(&(self.hello.len() as u16).to_be_bytes());
        frame.extend_from_slice(&self.hello);
        frame.extend_from_slice(&now.to_be_bytes());
        let sig = self
            .keypair
            .sign(&self.probe_message(&self.hello, now))
            .map_err(|_| Dropped::Malformed)?;
        frame.extend_from_slice(&sig);
        self.stats.probes_sent.fetch_add(1, Ordering::Relaxed);
        Ok(frame)
    }

    fn probe_message(&self, hello: &[u8], ts_ms: u64) -> Vec<u8> {
        let mut m = PROBE_DOMAIN.to_vec();
        m.extend_from_slice(self.config.fleet_id.as_bytes());
        m.push(0);
        m.extend_from_slice(hello);
        m.extend_from_slice(&ts_ms.to_be_bytes());
        m
    }

    /// Checks an arriving frame; what it carries, or why it was dropped. Never panics on input.
    pub fn open(&self, from: SocketAddr, frame: &[u8]) -> Result<Opened, Dropped> {
        let r = self.open_inner(from, frame);
        if let Err(d) = r {
            self.stats.drop(d);
        }
        r
    }

    fn open_inner(&self, from: SocketAddr, frame: &[u8]) -> Result<Opened, Dropped> {
        let now = self.clock.now_ms();
        let (&version, rest) = frame.split_first().ok_or(Dropped::Malformed)?;
        let (&kind, rest) = rest.split_first().ok_or(Dropped::Malformed)?;
        if version != FRAME_VERSION {
            return Err(Dropped::Malformed);
        }
        match kind {
            KIND_DATA => self.open_data(from, frame, 2, None, now),
            KIND_HELLO_DATA => {
                let (hello, _) = take_prefixed(rest).ok_or(Dropped::Malformed)?;
                let header = 2 + 2 + hello.len();
                self.open_data(from, frame, header, Some(hello), now)
            }
            KIND_PROBE => self.open_probe(rest, now),
            _ => Err(Dropped::Malformed),
        }
    }

    fn open_data(
        &self,
        from: SocketAddr,
        frame: &[u8],
        at: usize,
        hello: Option<&[u8]>,
        now: u64,
    ) -> Result<Opened, Dropped> {
        let body = frame.get(at..).ok_or(Dropped::Malformed)?;
        if body.len() < KID_LEN + CTR_LEN + TAG_LEN {
            return Err(Dropped::Malformed);
        }
        let mut kid = [0u8; KID_LEN];
        kid.copy_from_slice(&body[..KID_LEN]);
        let counter = u64::from_be_bytes(
            body[KID_LEN..KID_LEN + CTR_LEN]
                .try_into()
                .map_err(|_| Dropped::Malformed)?,
        );
        let (aad, ct) = frame.split_at(at + KID_LEN + CTR_LEN);
        let mut inner = self.inner.lock();
        let hello = match hello {
            Some(h) => {
                let (token, addr) = decode_hello(h).ok_or(Dropped::Malformed)?;
                let admitted = self.admit(&mut inner, token, now)?;
                if admitted != kid {
                    return Err(Dropped::Unadmitted);
                }
                Some(addr)
            }
            None => None,
        };
        if !inner.peers.contains_key(&kid) {
            return Err(Dropped::UnknownSender);
        }
        if !self.still_admitted(&mut inner, &kid, now) {
            return Err(Dropped::Unadmitted);
        }
        let e = inner.peers.get_mut(&kid).ok_or(Dropped::UnknownSender)?;
        if !e.window.fresh(counter) {
            return Err(Dropped::Replayed);
        }
        let plain =
            e.rx.decrypt(&nonce(counter), Payload { msg: ct, aad })
                .map_err(|_| Dropped::BadTag)?;
        e.window.mark(counter);
        // Whoever could seal this knows this node's PeerId, so it can open frames without a hello.
        e.confirmed = true;
        let peer = e.peer;
        if let Some(addr) = hello {
            Self::bind(&mut inner, kid, addr, true);
        }
        Self::bind(&mut inner, kid, from, false);
        if plain.is_empty() {
            return Ok(Opened::Nothing);
        }
        Ok(Opened::Message { peer, bytes: plain })
    }

    fn open_probe(&self, rest: &[u8], now: u64) -> Result<Opened, Dropped> {
        let (hello, tail) = take_prefixed(rest).ok_or(Dropped::Malformed)?;
        if tail.len() != 8 + SIG_LEN {
            return Err(Dropped::Malformed);
        }
        let ts = u64::from_be_bytes(tail[..8].try_into().map_err(|_| Dropped::Malformed)?);
        let sig = &tail[8..];
        if ts.abs_diff(now) > self.config.max_probe_skew_ms {
            return Err(Dropped::BadProbe);
        }
        let (token_bytes, addr) = decode_hello(hello).ok_or(Dropped::Malformed)?;
        let token = JoinToken::from_bytes(token_bytes).map_err(|_| Dropped::Malformed)?;
        let mut inner = self.inner.lock();
        if !Self::spend(&mut inner, self.config.handshakes_per_s, now) {
            return Err(Dropped::RateLimited);
        }
        let key = public_key_of(&token.peer).ok_or(Dropped::Malformed)?;
        if !key.verify(&self.probe_message(hello, ts), sig) {
            return Err(Dropped::BadProbe);
        }
        let kid = self.admit(&mut inner, token_bytes, now)?;
        Self::bind(&mut inner, kid, addr, true);
        let e = inner.peers.get_mut(&kid).ok_or(Dropped::UnknownSender)?;
        // The prober does not know this node: the answer carries our hello.
        e.confirmed = false;
        if e.last_answer_ms
            .is_some_and(|t| now < t + self.config.probe_every_ms)
        {
            return Ok(Opened::Nothing);
        }
        e.last_answer_ms = Some(now);
        drop(inner);
        let frame = self.seal(addr, &[])?;
        self.stats.probes_answered.fetch_add(1, Ordering::Relaxed);
        Ok(Opened::Reply { to: addr, frame })
    }
}

/// chitchat's transport over [`Sessions`]: every datagram sealed on the way out and opened on the
/// way in; what does not open is dropped (and counted) before chitchat sees it.
#[derive(Clone)]
pub struct SecureTransport {
    pub datagrams: Arc<dyn Datagrams>,
    pub sessions: Arc<Sessions>,
    pub traffic: Arc<GossipTraffic>,
}

impl std::fmt::Debug for SecureTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecureTransport({:?})", self.sessions)
    }
}

struct SecureSocket {
    socket: Box<dyn DatagramSocket>,
    sessions: Arc<Sessions>,
    traffic: Arc<GossipTraffic>,
    buf: Vec<u8>,
}

#[async_trait::async_trait]
impl Transport for SecureTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self.datagrams.bind(listen_addr).await?;
        Ok(Box::new(SecureSocket {
            socket,
            sessions: self.sessions.clone(),
            traffic: self.traffic.clone(),
            buf: vec![0u8; MAX_DATAGRAM],
        }))
    }
}

impl SecureSocket {
    async fn send_frame(&self, to: SocketAddr, frame: &[u8]) -> usize {
        match self.socket.send_to(frame, to).await {
            Ok(n) => {
                self.traffic
                    .bytes_sent
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.traffic.messages_sent.fetch_add(1, Ordering::Relaxed);
                n
            }
            Err(e) => {
                // A send that fails (an unreachable peer) loses one gossip message, as UDP does.
                tracing::debug!(%to, error = %e, "gossip send failed");
                0
            }
        }
    }
}

#[async_trait::async_trait]
impl Socket for SecureSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let mut bytes = Vec::new();
        envelope.serialize(&mut bytes);
        let num_bytes_sent = match self.sessions.seal(to, &bytes) {
            Ok(frame) => self.send_frame(to, &frame).await,
            Err(d) => {
                self.sessions.stats.drop(d);
                0
            }
        };
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::OutOfMemory
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(anyhow::Error::new(e).context("gossip socket failed")),
            };
            self.traffic
                .bytes_received
                .fetch_add(n as u64, Ordering::Relaxed);
            self.traffic
                .messages_received
                .fetch_add(1, Ordering::Relaxed);
            match self.sessions.open(from, &self.buf[..n]) {
                Ok(Opened::Message { bytes, .. }) => {
                    match ChitchatEnvelope::deserialize(&mut bytes.as_slice()) {
                        Ok(envelope) => {
                            return Ok(RecvOutcome {
                                from_addr: from,
                                envelope,
                                num_bytes_received: n,
                            });
                        }
                        Err(_) => self.sessions.stats.drop(Dropped::BadMessage),
                    }
                }
                Ok(Opened::Reply { to, frame }) => {
                    self.send_frame(to, &frame).await;
                }
                Ok(Opened::Nothing) | Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::FleetKey;

    struct Node {
        kp: Keypair,
        token: JoinToken,
        sessions: Sessions,
        addr: SocketAddr,
    }

    const NOW_MS: u64 = 1_800_000_000_000;

    fn node(fleet: &FleetKey, trust: &Trust, port: u16, seeds: &[SocketAddr]) -> Node {
        let kp = Keypair::generate_ed25519();
        let token = fleet.issue(kp.public().to_peer_id(), NOW_MS / 1000 + 3600);
        let addr: SocketAddr = ([10, 0, 0, 1], port).into();
        let mut cfg = SecureConfig::new("f".into(), addr);
        cfg.seeds = seeds.to_vec();
        let sessions = Sessions::new(&kp, &token, trust.clone(), clock(), cfg).expect("ed25519");
        Node {
            kp,
            token,
            sessions,
            addr,
        }
    }

    fn clock() -> Clock {
        Clock::fixed(NOW_MS)
    }

    fn message(o: Result<Opened, Dropped>) -> Vec<u8> {
        match o {
            Ok(Opened::Message { bytes, .. }) => bytes,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn a_seed_is_probed_then_both_sides_talk_with_data_frames() {
        let fleet = FleetKey::from_seed([1; 32]);
        let trust = Trust::new(vec![fleet.public()]);
        let b = node(&fleet, &trust, 2, &[]);
        let a = node(&fleet, &trust, 1, &[b.addr]);
        // a knows only b's address: it probes (nothing else leaves).
        let probe = a.sessions.seal(b.addr, b"syn").expect("probe");
        assert_eq!(probe[1], KIND_PROBE);
        assert_eq!(
            a.sessions.seal(b.addr, b"syn"),
            Err(Dropped::Unbound),
            "one probe a second"
        );
        // b answers at a's signed address with its hello.
        let Ok(Opened::Reply { to, frame }) = b.sessions.open(a.addr, &probe) else {
            panic!("the probe is answered")
        };
        assert_eq!(to, a.addr);
        assert_eq!(frame[1], KIND_HELLO_DATA);
        assert_eq!(a.sessions.open(b.addr, &frame), Ok(Opened::Nothing));
        // b's answer shows that b knows a (from the probe): a sends plain data frames.
        let f = a.sessions.seal(b.addr, b"syn").expect("seal");
        assert_eq!(f[1], KIND_DATA);
        assert_eq!(message(b.sessions.open(a.addr, &f)), b"syn");
        // A node that learned b from gossip (not from b) attaches its hello until b answers.
        let c = node(&fleet, &trust, 3, &[]);
        c.sessions.learn(&b.token, b.addr);
        let f = c.sessions.seal(b.addr, b"syn").expect("seal");
        assert_eq!(f[1], KIND_HELLO_DATA);
        assert_eq!(message(b.sessions.open(c.addr, &f)), b"syn");
        // b has seen an authenticated frame of a's: it answers with a plain data frame, and so
        // does a from then on.
        let f = b.sessions.seal(a.addr, b"synack").expect("seal");
        assert_eq!(f[1], KIND_DATA);
        assert_eq!(message(a.sessions.open(b.addr, &f)), b"synack");
        let f = a.sessions.seal(b.addr, b"ack").expect("seal");
        assert_eq!(f[1], KIND_DATA, "b spoke to a, so a drops its hello");
        assert_eq!(message(b.sessions.open(a.addr, &f)), b"ack");
        // The gossip is not readable on the wire.
        assert!(!f.windows(3).any(|w| w == b"ack"));
        // A replay is dropped, whoever sends it and from wherever.
        let spoofed: SocketAddr = ([6, 6, 6, 6], 6).into();
        assert_eq!(b.sessions.open(spoofed, &f), Err(Dropped::Replayed));
        assert_eq!(b.sessions.stats.count(Dropped::Replayed), 1);
        // One flipped bit anywhere fails authentication or framing.
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x40;
            assert!(
                b.sessions.open(a.addr, &g).is_err(),
                "bit flip at {i} accepted"
            );
        }
        let _ = (&a.kp, &a.token, &b.kp);
    }

    #[test]
    fn outsiders_cannot_probe_send_or_be_sent_to() {
        let fleet = FleetKey::from_seed([1; 32]);
        let trust = Trust::new(vec![fleet.public()]);
        let other = FleetKey::from_seed([2; 32]);
        let b = node(&fleet, &trust, 2, &[]);
        // A node of another fleet (its own key trusted only by itself).
        let x = node(&other, &Trust::new(vec![other.public()]), 9, &[b.addr]);
        let probe = x.sessions.seal(b.addr, b"syn").expect("probe");
        assert_eq!(b.sessions.open(x.addr, &probe), Err(Dropped::Unadmitted));
        // A valid member's probe, re-signed by someone else's key, fails its signature.
        let a = node(&fleet, &trust, 1, &[b.addr]);
        let mut forged = a.sessions.seal(b.addr, b"").expect("probe");
        let n = forged.len();
        let sig = x.kp.sign(b"whatever").expect("sign");
        forged[n - SIG_LEN..].copy_from_slice(&sig);
        assert_eq!(b.sessions.open(x.addr, &forged), Err(Dropped::BadProbe));
        // Garbage of every length is dropped as malformed, never a panic.
        for len in 0..200 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            assert!(b.sessions.open(x.addr, &junk).is_err());
        }
        // b never sends to an address that no admitted node is bound to.
        assert_eq!(b.sessions.seal(x.addr, b"synack"), Err(Dropped::Unbound));
        assert!(b.sessions.peers().is_empty());
    }

    #[test]
    fn a_session_ends_when_its_fleet_key_is_no_longer_trusted() {
        let fleet = FleetKey::from_seed([1; 32]);
        let trust = Trust::new(vec![fleet.public()]);
        let a = node(&fleet, &trust, 1, &[]);
        let b = node(&fleet, &trust, 2, &[]);
        a.sessions.learn(&b.token, b.addr);
        let f = a.sessions.seal(b.addr, b"x").expect("seal");
        assert_eq!(message(b.sessions.open(a.addr, &f)), b"x");
        trust.set(vec![FleetKey::from_seed([3; 32]).public()]);
        let f = a.sessions.seal(b.addr, b"y");
        assert_eq!(f, Err(Dropped::Unbound), "a stops talking to b");
        assert_eq!(a.sessions.stats.sessions_revoked.load(Ordering::Relaxed), 1);
        assert_eq!(b.sessions.sweep(), 1, "b ends its session with a");
    }

    #[test]
    fn the_replay_window_accepts_reordering_and_refuses_repeats() {
        let mut w = ReplayWindow::default();
        for c in [10, 12, 11, 75, 20] {
            assert!(w.fresh(c), "{c}");
            w.mark(c);
        }
        assert!(!w.fresh(10), "older than the window");
        assert!(!w.fresh(12) || w.max - 12 >= REPLAY_WINDOW);
        assert!(!w.fresh(75), "seen");
        assert!(!w.fresh(20), "seen");
        assert!(w.fresh(74));
    }
}
