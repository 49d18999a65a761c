//! HAProxy, for users who run it: augur drives one backend per service through HAProxy's Runtime
//! API on its admin socket (`stats socket ... level admin`). No maintained Rust client exists; this
//! one sends one command per connection (HAProxy's default, non-interactive mode) and reads the
//! answer to the end.
//!
//! Dynamic servers (`add server`) need a backend with a dynamic balancing algorithm (`roundrobin`,
//! `leastconn`, `first`, `random`): HAProxy 2.6 (Debian's) refuses them under `static-rr` or a
//! hashing algorithm without `hash-type consistent`, which is reported as
//! [`HaproxyError::StaticBalancing`] with what to change.

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
        addr: std::net::SocketAddr,
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::task::TaskTracker;

    use super::*;

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
        let missing = RuntimeApi::new("/nonexistent/admin.sock");
        assert!(matches!(
            missing.command("show info").await,
            Err(HaproxyError::Socket { .. })
        ));
    }
}
