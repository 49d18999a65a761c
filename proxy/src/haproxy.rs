//! HAProxy, for users who run it: augur drives one backend per service through HAProxy's Runtime
//! API on its admin socket (`stats socket ... level admin`). No maintained Rust client exists; this
//! one sends one command per connection (HAProxy's default, non-interactive mode) and reads the
//! answer to the end.
//!
//! Dynamic servers (`add server`) need a backend with a dynamic balancing algorithm (`roundrobin`,
//! `leastconn`, `first`, `random`): HAProxy 2.6 (Debian's) refuses them under `static-rr` or a
//! hashing algorithm without `hash-type consistent`, which is reported as
//! [`HaproxyError::StaticBalancing`] with what to change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::Weight;

/// Why HAProxy did not do what was asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HaproxyError {
    #[error(
        "cannot reach HAProxy's admin socket {path}: {reason} (is HAProxy running, with `stats socket {path} level admin`?)"
    )]
    Socket { path: PathBuf, reason: String },
    #[error("HAProxy did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "backend {backend} cannot take dynamic servers: it needs a dynamic balancing algorithm \
         (`balance roundrobin`, `leastconn`, `first` or `random`), not `static-rr` or a \
         non-consistent hash; HAProxy said: {said}"
    )]
    StaticBalancing { backend: String, said: String },
    #[error("HAProxy refused `{command}`: {said}")]
    Refused { command: String, said: String },
}

/// A server's administrative state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminState {
    /// Takes traffic.
    Ready,
    /// Takes no new connections; open ones continue.
    Drain,
    /// Out of service (needed before `del server`).
    Maint,
}

impl AdminState {
    fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// One server of a backend, as `show servers state` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// HAProxy's operational state (0 stopped, 1 starting, 2 running, 3 stopping).
    pub op_state: u8,
    /// HAProxy's administrative state bits (0: ready; 0x1/0x2/0x20: maintenance; 0x8: drain).
    pub admin_state: u8,
    pub weight: u32,
}

/// A client of one HAProxy's Runtime API.
#[derive(Clone, Debug)]
pub struct RuntimeApi {
    socket: PathBuf,
    timeout: Duration,
}

impl RuntimeApi {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_owned(),
            timeout: Duration::from_secs(2),
        }
    }

    /// Sends one command and returns HAProxy's answer.
    pub async fn command(&self, command: &str) -> Result<String, HaproxyError> {
        let run = async {
            let mut s =
                UnixStream::connect(&self.socket)
                    .await
                    .map_err(|e| HaproxyError::Socket {
                        path: self.socket.clone(),
                        reason: e.to_string(),
                    })?;
            let io = |e: std::io::Error| HaproxyError::Socket {
                path: self.socket.clone(),
                reason: e.to_string(),
            };
            s.write_all(command.as_bytes()).await.map_err(io)?;
            s.write_all(b"\n").await.map_err(io)?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.map_err(io)?;
            Ok(out)
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| HaproxyError::Timeout(self.timeout))?
    }

    /// Sends a command whose success is an empty answer or one of `ok` (anything else is refused).
    async fn expect(&self, command: String, ok: &[&str]) -> Result<(), HaproxyError> {
        let said = self.command(&command).await?;
        let said = said.trim();
        if said.is_empty() || ok.iter().any(|o| said.starts_with(o)) {
            Ok(())
        } else {
            Err(HaproxyError::Refused {
                command,
                said: said.to_owned(),
            })
        }
    }

    /// Adds a server (in maintenance, as HAProxy adds them; [`enable`](Self::enable) starts it).
    pub async fn add_server(
        &self,
        backend: &str,
        server: &str,
        addr: SocketAddr,
        weight: Weight,
    ) -> Result<(), HaproxyError> {
        let command = format!("add server {backend}/{server} {addr} weight {weight}");
        match self.expect(command, &["New server registered"]).await {
            Err(HaproxyError::Refused { said, .. })
                if said.contains("dynamic") && said.contains("balanc") =>
            {
                Err(HaproxyError::StaticBalancing {
                    backend: backend.to_owned(),
                    said,
                })
            }
            other => other,
        }
    }

    /// Takes the server out of maintenance (and starts its health checks, if it has any).
    pub async fn enable(&self, backend: &str, server: &str) -> Result<(), HaproxyError> {
        self.expect(format!("enable server {backend}/{server}"), &[])
            .await
    }

    pub async fn set_weight(
        &self,
        backend: &str,
        server: &str,
        weight: Weight,
    ) -> Result<(), HaproxyError> {
        self.expect(
            format!("set server {backend}/{server} weight {weight}"),
            &[],
        )
        .await
    }

    pub async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), HaproxyError> {
        self.expect(
            format!("set server {backend}/{server} state {}", state.as_str()),
            &[],
        )
        .await
    }

    /// Closes every session on the server.
    pub async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<(), HaproxyError> {
        self.expect(format!("shutdown sessions server {backend}/{server}"), &[])
            .await
    }

    /// Removes a server: it must be in maintenance and without sessions.
    pub async fn del_server(&self, backend: &str, server: &str) -> Result<(), HaproxyError> {
        self.expect(
            format!("del server {backend}/{server}"),
            &["Server deleted"],
        )
        .await
    }

    /// The servers of `backend`.
    pub async fn servers(&self, backend: &str) -> Result<Vec<ServerState>, HaproxyError> {
        let command = format!("show servers state {backend}");
        let said = self.command(&command).await?;
        let mut out = Vec::new();
        for line in said.lines() {
            if line.starts_with('#') || line.trim().is_empty() || line.trim() == "1" {
                continue;
            }
            // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight
            // srv_iweight srv_time_since_last_change srv_check_status srv_check_result
            // srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id
            // srv_fqdn srv_port ...
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 19 {
                return Err(HaproxyError::Refused {
                    command,
                    said: said.trim().to_owned(),
                });
            }
            out.push(ServerState {
                name: f[3].to_owned(),
                addr: f[4].to_owned(),
                op_state: f[5].parse().unwrap_or(0),
                admin_state: f[6].parse().unwrap_or(0),
                weight: f[7].parse().unwrap_or(0),
                port: f[18].parse().unwrap_or(0),
            });
        }
        Ok(out)
    }
}

/// The servers augur adds to a backend are named with this prefix; the others (declared in
/// haproxy.cfg) are left alone.
pub const SERVER_PREFIX: &str = "augur-";

/// The name of augur's server for a backend address (`augur-10.0.0.5-4001`).
pub fn server_name(addr: SocketAddr) -> String {
    format!("{SERVER_PREFIX}{}-{}", addr.ip(), addr.port())
}

/// `admin_state` bits that mean maintenance (forced, inherited, or from a resolver).
const ADMIN_MAINT: u8 = 0x01 | 0x02 | 0x20;
/// `admin_state` bit of a forced drain.
const ADMIN_DRAIN: u8 = 0x08;

/// One step of keeping a backend in step with its routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `add server` then `enable server`.
    Add {
        server: String,
        addr: SocketAddr,
        weight: Weight,
    },
    SetWeight {
        server: String,
        weight: Weight,
    },
    /// Back to `ready` (a wanted server found draining or in maintenance).
    Ready {
        server: String,
    },
    /// No new connections; the open ones go on (for the grace).
    Drain {
        server: String,
    },
    /// `maint`, `shutdown sessions`, `del server`: its grace is over.
    Remove {
        server: String,
    },
}

/// What takes a backend's servers (`have`) to `want` (address and weight): augur's servers
/// only. A server no longer wanted is drained first, and removed once it has drained for `grace`
/// (`drains`: when each drain began, kept by the caller).
pub fn plan(
    have: &[ServerState],
    want: &BTreeMap<SocketAddr, Weight>,
    drains: &HashMap<String, tokio::time::Instant>,
    now: tokio::time::Instant,
    grace: Duration,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mine: HashMap<&str, &ServerState> = have
        .iter()
        .filter(|s| s.name.starts_with(SERVER_PREFIX))
        .map(|s| (s.name.as_str(), s))
        .collect();
    for (&addr, &weight) in want {
        let server = server_name(addr);
        match mine.get(server.as_str()) {
            None => ops.push(Op::Add {
                server,
                addr,
                weight,
            }),
            Some(s) => {
                if s.admin_state & (ADMIN_MAINT | ADMIN_DRAIN) != 0 {
                    ops.push(Op::Ready {
                        server: server.clone(),
                    });
                }
                if s.weight != u32::from(weight) {
                    ops.push(Op::SetWeight { server, weight });
                }
            }
        }
    }
    let wanted: HashSet<String> = want.keys().map(|a| server_name(*a)).collect();
    let mut gone: Vec<&&ServerState> = mine
        .values()
        .filter(|s| !wanted.contains(&s.name))
        .collect();
    gone.sort_by(|a, b| a.name.cmp(&b.name));
    for s in gone {
        let server = s.name.clone();
        let drained_enough = drains
            .get(&s.name)
            .is_some_and(|since| now.duration_since(*since) >= grace);
        if s.admin_state & ADMIN_MAINT != 0 || drained_enough {
            ops.push(Op::Remove { server });
        } else if s.admin_state & ADMIN_DRAIN == 0 || !drains.contains_key(&s.name) {
            ops.push(Op::Drain { server });
        }
    }
    ops
}

/// Keeps HAProxy backends in step with routes, one backend at a time: reads the backend's
/// servers, applies [`plan`], and remembers the drains it started.
#[derive(Debug)]
pub struct BackendSync {
    pub api: RuntimeApi,
    pub grace: Duration,
    /// (backend, server) -> when its drain began.
    drains: HashMap<(String, String), tokio::time::Instant>,
}

impl BackendSync {
    pub fn new(api: RuntimeApi, grace: Duration) -> Self {
        Self {
            api,
            grace,
            drains: HashMap::new(),
        }
    }

    /// Brings `backend` to `want`. Returns whether drains are still under way (sync again
    /// later to finish them).
    pub async fn sync(
        &mut self,
        backend: &str,
        want: &BTreeMap<SocketAddr, Weight>,
    ) -> Result<bool, HaproxyError> {
        let have = self.api.servers(backend).await?;
        let now = tokio::time::Instant::now();
        let drains: HashMap<String, tokio::time::Instant> = self
            .drains
            .iter()
            .filter(|((b, _), _)| b == backend)
            .map(|((_, s), t)| (s.clone(), *t))
            .collect();
        for op in plan(&have, want, &drains, now, self.grace) {
            match op {
                Op::Add {
                    server,
                    addr,
                    weight,
                } => {
                    self.api.add_server(backend, &server, addr, weight).await?;
                    self.api.enable(backend, &server).await?;
                }
                Op::SetWeight { server, weight } => {
                    self.api.set_weight(backend, &server, weight).await?;
                }
                Op::Ready { server } => {
                    self.drains.remove(&(backend.to_owned(), server.clone()));
                    self.api
                        .set_state(backend, &server, AdminState::Ready)
                        .await?;
                }
                Op::Drain { server } => {
                    self.api
                        .set_state(backend, &server, AdminState::Drain)
                        .await?;
                    self.drains.insert((backend.to_owned(), server), now);
                }
                Op::Remove { server } => {
                    self.api
                        .set_state(backend, &server, AdminState::Maint)
                        .await?;
                    self.api.shutdown_sessions(backend, &server).await?;
                    self.api.del_server(backend, &server).await?;
                    self.drains.remove(&(backend.to_owned(), server));
                }
            }
        }
        Ok(self.drains.keys().any(|(b, _)| b == backend))
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::task::TaskTracker;

    use super::*;

    fn server(addr: &str, admin_state: u8, weight: u32) -> ServerState {
        let a: SocketAddr = addr.parse().expect("addr");
        ServerState {
            name: server_name(a),
            addr: a.ip().to_string(),
            port: a.port(),
            op_state: 2,
            admin_state,
            weight,
        }
    }

    #[test]
    fn a_backend_is_brought_to_its_routes_draining_before_removing() {
        let t0 = tokio::time::Instant::now();
        let grace = Duration::from_secs(10);
        let a: SocketAddr = "10.0.0.1:80".parse().expect("a");
        let b: SocketAddr = "10.0.0.2:80".parse().expect("b");
        let name = |x: SocketAddr| server_name(x);
        let want = |list: &[(SocketAddr, Weight)]| list.iter().copied().collect::<BTreeMap<_, _>>();
        type Case = (
            &'static str,
            Vec<ServerState>,
            BTreeMap<SocketAddr, Weight>,
            Vec<(String, u64)>,
            u64,
            Vec<Op>,
        );
        let cases: Vec<Case> = vec![
            (
                "new backends are added (and enabled)",
                vec![],
                want(&[(a, 256)]),
                vec![],
                0,
                vec![Op::Add {
                    server: name(a),
                    addr: a,
                    weight: 256,
                }],
            ),
            (
                "a weight that differs is set; one that matches is left",
                vec![server("10.0.0.1:80", 0, 256), server("10.0.0.2:80", 0, 100)],
                want(&[(a, 256), (b, 50)]),
                vec![],
                0,
                vec![Op::SetWeight {
                    server: name(b),
                    weight: 50,
                }],
            ),
            (
                "a server no longer wanted is drained first",
                vec![server("10.0.0.1:80", 0, 256), server("10.0.0.2:80", 0, 256)],
                want(&[(a, 256)]),
                vec![],
                0,
                vec![Op::Drain { server: name(b) }],
            ),
            (
                "... and left draining within its grace",
                vec![
                    server("10.0.0.1:80", 0, 256),
                    server("10.0.0.2:80", 0x08, 256),
                ],
                want(&[(a, 256)]),
                vec![(name(b), 0)],
                5,
                vec![],
            ),
            (
                "... and removed once the grace is over",
                vec![
                    server("10.0.0.1:80", 0, 256),
                    server("10.0.0.2:80", 0x08, 256),
                ],
                want(&[(a, 256)]),
                vec![(name(b), 0)],
                10,
                vec![Op::Remove { server: name(b) }],
            ),
            (
                "a drain nobody remembers (the agent restarted) starts again",
                vec![server("10.0.0.2:80", 0x08, 256)],
                want(&[]),
                vec![],
                60,
                vec![Op::Drain { server: name(b) }],
            ),
            (
                "a server in maintenance that is not wanted is removed at once",
                vec![server("10.0.0.2:80", 0x01, 256)],
                want(&[]),
                vec![],
                0,
                vec![Op::Remove { server: name(b) }],
            ),
            (
                "a wanted server found draining or in maintenance is made ready",
                vec![
                    server("10.0.0.1:80", 0x08, 256),
                    server("10.0.0.2:80", 0x01, 256),
                ],
                want(&[(a, 256), (b, 256)]),
                vec![(name(a), 0)],
                1,
                vec![Op::Ready { server: name(a) }, Op::Ready { server: name(b) }],
            ),
            (
                "servers declared in haproxy.cfg are left alone",
                vec![ServerState {
                    name: "static1".into(),
                    ..server("10.0.0.9:80", 0, 1)
                }],
                want(&[]),
                vec![],
                0,
                vec![],
            ),
        ];
        for (what, have, want, drains, at_s, expect) in cases {
            let drains: HashMap<String, tokio::time::Instant> = drains
                .into_iter()
                .map(|(s, t)| (s, t0 + Duration::from_secs(t)))
                .collect();
            let now = t0 + Duration::from_secs(at_s);
            assert_eq!(plan(&have, &want, &drains, now, grace), expect, "{what}");
        }
    }

    /// Debian's haproxy, or `$HAPROXY`. Missing: the test is skipped, unless
    /// `AUGUR_REQUIRE_HAPROXY` is set (`.ci/run` installs it and sets it).
    fn haproxy() -> Option<PathBuf> {
        let found = std::env::var_os("HAPROXY").map(PathBuf::from).or_else(|| {
            [
                "/usr/sbin/haproxy",
                "/usr/bin/haproxy",
                "/usr/local/sbin/haproxy",
            ]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
        });
        if found.is_none() {
            assert!(
                std::env::var_os("AUGUR_REQUIRE_HAPROXY").is_none(),
                "haproxy not found; install Debian's package (apt-get install haproxy) or set HAPROXY"
            );
            eprintln!("skipped: haproxy not installed");
        }
        found
    }

    /// A backend that answers every connection with its name.
    async fn backend(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        TaskTracker::new().spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        addr
    }

    async fn who(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 8];
        let n = s.read(&mut buf).await.unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    struct Running {
        child: tokio::process::Child,
        _dir: tempfile::TempDir,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.child.start_kill();
        }
    }

    async fn start(bin: &Path) -> (Running, RuntimeApi, SocketAddr) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("admin.sock");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let cfg = format!(
            "global\n    stats socket {} level admin\n    maxconn 1000\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
             frontend web_in\n    bind 127.0.0.1:{port}\n    default_backend web\n\
             backend web\n    balance roundrobin\n\
             backend fixed\n    balance static-rr\n",
            sock.display()
        );
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).expect("config");
        let child = tokio::process::Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let api = RuntimeApi::new(&sock);
        // HAProxy creates its socket once it has parsed the configuration.
        tokio::time::timeout(Duration::from_secs(10), async {
            while api.command("show info").await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the admin socket answers");
        (
            Running { child, _dir: dir },
            api,
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drives_a_real_haproxy_backend() {
        let Some(bin) = haproxy() else { return };
        let (a, b) = (backend("a").await, backend("b").await);
        let (_running, api, front) = start(&bin).await;
        api.add_server("web", "a", a, 100).await.expect("add a");
        api.add_server("web", "b", b, 100).await.expect("add b");
        api.enable("web", "a").await.expect("enable a");
        api.enable("web", "b").await.expect("enable b");
        let mut seen = HashSet::new();
        for _ in 0..10 {
            seen.insert(who(front).await);
        }
        assert_eq!(seen, HashSet::from(["a".to_owned(), "b".to_owned()]));
        let servers = api.servers("web").await.expect("state");
        assert_eq!(
            servers
                .iter()
                .map(|s| (s.name.as_str(), s.port, s.weight))
                .collect::<Vec<_>>(),
            vec![("a", a.port(), 100), ("b", b.port(), 100)]
        );
        api.set_weight("web", "b", 50).await.expect("weight");
        // Draining a: new connections go to b only.
        api.set_state("web", "a", AdminState::Drain)
            .await
            .expect("drain");
        for _ in 0..10 {
            assert_eq!(who(front).await, "b");
        }
        // Then out: maintenance, sessions closed, deleted.
        api.set_state("web", "a", AdminState::Maint)
            .await
            .expect("maint");
        api.shutdown_sessions("web", "a")
            .await
            .expect("shutdown sessions");
        api.del_server("web", "a").await.expect("del");
        let servers = api.servers("web").await.expect("state");
        assert_eq!(
            servers
                .iter()
                .map(|s| (s.name.as_str(), s.weight))
                .collect::<Vec<_>>(),
            vec![("b", 50)]
        );
        // Errors say what was wrong.
        let e = api
            .add_server("fixed", "x", a, 1)
            .await
            .expect_err("static-rr");
        assert!(matches!(e, HaproxyError::StaticBalancing { .. }), "{e}");
        let e = api
            .del_server("web", "nope")
            .await
            .expect_err("no such server");
        assert!(matches!(e, HaproxyError::Refused { .. }), "{e}");
        // The sync: routes in, servers out; a server leaving is drained, then removed.
        let mut sync = BackendSync::new(api.clone(), Duration::from_millis(300));
        let want = BTreeMap::from([(a, 256), (b, 256)]);
        assert!(!sync.sync("web", &want).await.expect("sync"));
        let names = |servers: Vec<ServerState>| {
            let mut v: Vec<_> = servers
                .into_iter()
                .map(|s| (s.name, s.admin_state, s.weight))
                .collect();
            v.sort();
            v
        };
        let mut expect = vec![
            ("b".to_owned(), 0, 50),
            (server_name(a), 0, 256),
            (server_name(b), 0, 256),
        ];
        expect.sort();
        assert_eq!(names(api.servers("web").await.expect("state")), expect);
        let want = BTreeMap::from([(a, 256)]);
        assert!(sync.sync("web", &want).await.expect("drain"), "draining");
        assert!(
            names(api.servers("web").await.expect("state")).contains(&(server_name(b), 0x08, 256)),
            "b drains"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(!sync.sync("web", &want).await.expect("remove"), "drained");
        assert_eq!(
            names(api.servers("web").await.expect("state")),
            vec![(server_name(a), 0, 256), ("b".to_owned(), 0, 50)]
        );
        let e = sync.sync("nosuch", &want).await.expect_err("no backend");
        assert!(matches!(e, HaproxyError::Refused { .. }), "{e}");
        let missing = RuntimeApi::new("/nonexistent/admin.sock");
        assert!(matches!(
            missing.command("show info").await,
            Err(HaproxyError::Socket { .. })
        ));
    }
}
