//! A service as the fleet should run it: the catalog's unit of desired state. Written by an
//! operator in TOML (`[service]` and its tables), checked here field by field; a refusal names the
//! offending field and says what is allowed. The spec is plain data: how it is signed and spread
//! (the catalog), where its replicas go (placement) and how instances run (drivers) live elsewhere.

use std::collections::BTreeMap;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Longest service name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Most replicas one service may ask for.
pub const MAX_REPLICAS: u32 = 64;

/// A spec file: one `[service]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    pub service: ServiceSpec,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Lower-case letters, digits and `-`, at most 63, starting with a letter (it names the
    /// resource type of the service's instances).
    pub name: String,
    /// The port every node's proxy listens on for this service (the instances get their own,
    /// in `PORT`).
    pub port: u16,
    /// How the proxies carry its traffic: `tcp` (each connection to an instance) or `http`
    /// (HTTP/1.1: each request, retried on another instance when it could not be sent).
    #[serde(default)]
    pub protocol: Protocol,
    /// Instances that serve traffic.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Extra running instances kept ready for `warm_standby` (no traffic until switched to).
    #[serde(default)]
    pub standbys: u32,
    /// How an instance is moved off a node predicted to fail.
    #[serde(default)]
    pub strategy: Strategy,
    /// `act` (the default) or `shadow`: augur decides its moves and publishes them as events,
    /// but moves nothing on its own (an operator's `augur migrate` still does). The fleet
    /// document's `autonomy.mode = "shadow"` applies to every service.
    #[serde(default, skip_serializing_if = "is_act")]
    pub autonomy: crate::autonomy::Mode,
    /// Nodes (by node name) the replicas are pinned to, in order; at most `replicas`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pin: Vec<String>,
    pub driver: Driver,
    pub health: HealthCheck,
    #[serde(default)]
    pub placement: Placement,
}

fn one() -> u32 {
    1
}

fn is_act(m: &crate::autonomy::Mode) -> bool {
    *m == crate::autonomy::Mode::Act
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Stateless: start a new instance, gate it on health, shift traffic, drain the old one.
    #[default]
    Live,
    /// Switch traffic to a running standby, then make a new standby.
    WarmStandby,
    /// Bring up the new instance beside the old, verify, switch, keep the old for rollback.
    BlueGreen,
}

/// How the proxies carry a service's traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// L4: each connection goes to one instance (any protocol over TCP).
    #[default]
    Tcp,
    /// HTTP/1.1: each request goes to an instance; a request that could not be sent (connect
    /// refused, kept-alive connection closed) goes to another; one that reached an instance is
    /// never sent twice. No upgrades (WebSocket): use `tcp` for those.
    Http,
}

/// How instances are run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Driver {
    /// The agent runs `command` itself (output to its log, restarts with backoff, SIGTERM then
    /// SIGKILL after `stop_grace`).
    Process {
        command: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workdir: Option<String>,
        #[serde(default = "stop_grace", with = "humantime_serde")]
        stop_grace: Duration,
    },
    /// User scripts drive the instance (a VM, a container, a systemd unit): each gets the service
    /// name, the instance id and `PORT` in its environment.
    Hook {
        start: String,
        stop: String,
        /// Prints the instance's state (`running` or `stopped`); used to adopt instances after a
        /// restart of the agent.
        status: String,
        /// Copies state to a new instance before a move (optional).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer: Option<String>,
    },
}

fn stop_grace() -> Duration {
    Duration::from_secs(10)
}

/// How an instance's health is checked: an HTTP GET answered 2xx, or a TCP connect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// A path (`/healthz`) for an HTTP check; without it, a TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default = "interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passes before an instance counts as healthy.
    #[serde(default = "two")]
    pub successes: u32,
    /// Consecutive failures before it counts as unhealthy.
    #[serde(default = "three")]
    pub failures: u32,
}

fn interval() -> Duration {
    Duration::from_secs(1)
}
fn timeout() -> Duration {
    Duration::from_millis(500)
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

/// Where replicas may go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Zones allowed (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// Labels a node must carry (`mesh.labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// At most one replica of this service per node.
    #[serde(default = "yes")]
    pub anti_affinity: bool,
    /// Free memory a node needs to take a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_memory: Option<ByteSize>,
    /// Free CPU (fraction of the node, 0..1) a node needs to take a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_cpu: Option<f64>,
}

fn yes() -> bool {
    true
}

/// A spec that does not validate: the field (dotted, as in the file) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Whether `s` names a service (and so a resource type): a DNS label starting with a letter.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(format!("1 to {MAX_NAME_LEN} characters, got {}", s.len()));
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("{s:?} must start with a lower-case letter"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{s:?} contains {c:?}; use lower-case letters, digits and '-'"
        ));
    }
    if s.ends_with('-') {
        return Err(format!("{s:?} must not end with '-'"));
    }
    Ok(())
}

impl ServiceSpec {
    /// Whether an instance running `self` goes on running under `next`: only a change of what
    /// runs (the driver and its settings) starts instances anew; replicas, placement, the health
    /// check, the strategy and the proxies' port apply to running instances as they are.
    pub fn same_instance(&self, next: &ServiceSpec) -> bool {
        self.driver == next.driver
    }

    /// Parses a spec file and checks it.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let file: SpecFile = toml::from_str(text).map_err(|e| {
            // toml names the key path in its message; keep it whole.
            err(
                "service",
                e.message().to_owned() + &span_hint(text, e.span()),
            )
        })?;
        file.service.validate()?;
        Ok(file.service)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name(&self.name).map_err(|m| err("service.name", m))?;
        if self.name == "host" {
            return Err(err(
                "service.name",
                "\"host\" is reserved: instances are resources of their service's type, and \"host\" is the nodes' own",
            ));
        }
        if self.port == 0 {
            return Err(err("service.port", "a port from 1 to 65535"));
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return Err(err(
                "service.replicas",
                format!("1 to {MAX_REPLICAS}, got {}", self.replicas),
            ));
        }
        match (self.strategy, self.standbys) {
            (Strategy::WarmStandby, 0) => {
                return Err(err(
                    "service.standbys",
                    "strategy \"warm_standby\" needs at least one standby",
                ));
            }
            (Strategy::Live | Strategy::BlueGreen, n) if n > 0 => {
                return Err(err(
                    "service.standbys",
                    "standbys are kept only with strategy \"warm_standby\"",
                ));
            }
            _ => {}
        }
        if self.standbys > MAX_REPLICAS {
            return Err(err("service.standbys", format!("at most {MAX_REPLICAS}")));
        }
        if self.pin.len() > self.replicas as usize {
            return Err(err(
                "service.pin",
                format!(
                    "{} nodes named for {} replicas",
                    self.pin.len(),
                    self.replicas
                ),
            ));
        }
        if let Some(p) = self.pin.iter().find(|p| p.trim().is_empty()) {
            return Err(err("service.pin", format!("{p:?} is not a node name")));
        }
        match &self.driver {
            Driver::Process {
                command,
                env,
                stop_grace,
                ..
            } => {
                if command.trim().is_empty() {
                    return Err(err("service.driver.command", "the program to run"));
                }
                if let Some(k) = env.keys().find(|k| !valid_env_name(k)) {
                    return Err(err(
                        "service.driver.env",
                        format!("{k:?} is not an environment variable name"),
                    ));
                }
                if env.contains_key("PORT") {
                    return Err(err(
                        "service.driver.env",
                        "PORT is set by augur (the instance's own port)",
                    ));
                }
                if stop_grace.is_zero() {
                    return Err(err(
                        "service.driver.stop_grace",
                        "more than 0 s (how long SIGTERM is given before SIGKILL)",
                    ));
                }
            }
            Driver::Hook {
                start,
                stop,
                status,
                ..
            } => {
                for (field, v) in [("start", start), ("stop", stop), ("status", status)] {
                    if v.trim().is_empty() {
                        return Err(err(
                            &format!("service.driver.{field}"),
                            "the hook script to run",
                        ));
                    }
                }
            }
        }
        let h = &self.health;
        if let Some(path) = &h.http
            && !path.starts_with('/')
        {
            return Err(err(
                "service.health.http",
                format!("a path starting with '/', got {path:?}"),
            ));
        }
        if h.interval < Duration::from_millis(100) {
            return Err(err("service.health.interval", "at least 100 ms"));
        }
        if h.timeout.is_zero() || h.timeout >= h.interval {
            return Err(err(
                "service.health.timeout",
                "more than 0 and less than the interval",
            ));
        }
        if h.successes == 0 || h.failures == 0 {
            return Err(err(
                if h.successes == 0 {
                    "service.health.successes"
                } else {
                    "service.health.failures"
                },
                "at least 1",
            ));
        }
        if let Some(cpu) = self.placement.min_free_cpu
            && !(0.0..=1.0).contains(&cpu)
        {
            return Err(err(
                "service.placement.min_free_cpu",
                format!("a fraction of the node from 0 to 1, got {cpu}"),
            ));
        }
        Ok(())
    }
}

fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// ` (line N)` for a parse error's position.
fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [service]
        name = "web"
        port = 8080
        replicas = 2

        [service.driver]
        kind = "process"
        command = "/usr/bin/web"
        args = ["--listen", "127.0.0.1"]
        env = { LOG = "info" }

        [service.health]
        http = "/healthz"
        interval = "2s"
        timeout = "500ms"

        [service.placement]
        zones = ["a", "b"]
        min_free_memory = "256 MiB"
    "#;

    #[test]
    fn a_good_spec_parses_with_its_defaults() {
        let s = ServiceSpec::from_toml(GOOD).expect("valid");
        assert_eq!(s.name, "web");
        assert_eq!(s.strategy, Strategy::Live);
        assert_eq!(s.health.successes, 2);
        assert!(s.placement.anti_affinity);
        assert_eq!(s.placement.min_free_memory, Some(ByteSize::mib(256)));
        assert!(
            matches!(&s.driver, Driver::Process { stop_grace, .. } if *stop_grace == Duration::from_secs(10))
        );
        // What serialises back parses to the same spec.
        let text = toml::to_string(&SpecFile { service: s.clone() }).expect("toml");
        assert_eq!(ServiceSpec::from_toml(&text).expect("again"), s);
    }

    /// Each bad spec is refused with the offending field named.
    #[test]
    fn bad_specs_name_their_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("name = \"web\"", "name = \"Web\"", "service.name"),
            ("name = \"web\"", "name = \"web-\"", "service.name"),
            ("name = \"web\"", "name = \"host\"", "service.name"),
            ("port = 8080", "port = 0", "service.port"),
            ("replicas = 2", "replicas = 0", "service.replicas"),
            (
                "replicas = 2",
                "replicas = 2\nstandbys = 1",
                "service.standbys",
            ),
            (
                "replicas = 2",
                "replicas = 2\nstrategy = \"warm_standby\"",
                "service.standbys",
            ),
            (
                "replicas = 2",
                "replicas = 1\npin = [\"a\", \"b\"]",
                "service.pin",
            ),
            (
                "command = \"/usr/bin/web\"",
                "command = \" \"",
                "service.driver.command",
            ),
            (
                "env = { LOG = \"info\" }",
                "env = { PORT = \"1\" }",
                "service.driver.env",
            ),
            (
                "env = { LOG = \"info\" }",
                "env = { \"1X\" = \"1\" }",
                "service.driver.env",
            ),
            (
                "http = \"/healthz\"",
                "http = \"healthz\"",
                "service.health.http",
            ),
            (
                "timeout = \"500ms\"",
                "timeout = \"2s\"",
                "service.health.timeout",
            ),
            (
                "interval = \"2s\"",
                "interval = \"10ms\"",
                "service.health.interval",
            ),
            (
                "zones = [\"a\", \"b\"]",
                "zones = [\"a\"]\nmin_free_cpu = 1.5",
                "service.placement.min_free_cpu",
            ),
        ];
        for (from, to, field) in cases {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            let e = ServiceSpec::from_toml(&text).expect_err(to);
            assert_eq!(e.field, *field, "{to}: {e}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused_with_their_line() {
        let e = ServiceSpec::from_toml(&GOOD.replacen("port = 8080", "port = 8080\nprot = 1", 1))
            .expect_err("unknown key");
        assert!(
            e.message.contains("prot") && e.message.contains("line"),
            "{e}"
        );
        let e =
            ServiceSpec::from_toml(&GOOD.replacen("kind = \"process\"", "kind = \"docker\"", 1))
                .expect_err("unknown driver");
        assert!(e.message.contains("docker"), "{e}");
    }

    #[test]
    fn a_hook_driver_needs_its_scripts() {
        let hook = GOOD.replacen(
            "kind = \"process\"\n        command = \"/usr/bin/web\"\n        args = [\"--listen\", \"127.0.0.1\"]\n        env = { LOG = \"info\" }",
            "kind = \"hook\"\n        start = \"/etc/web/start\"\n        stop = \"/etc/web/stop\"\n        status = \"\"",
            1,
        );
        let e = ServiceSpec::from_toml(&hook).expect_err("empty status");
        assert_eq!(e.field, "service.driver.status");
        let ok = hook.replacen("status = \"\"", "status = \"/etc/web/status\"", 1);
        assert!(matches!(
            ServiceSpec::from_toml(&ok).expect("valid").driver,
            Driver::Hook { .. }
        ));
    }
}
