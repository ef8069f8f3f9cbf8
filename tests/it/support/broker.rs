//! A RabbitMQ node of one test's own: own node name, ports, config and data under a temp
//! folder, stopped when dropped. For what must never touch the shared broker (its listeners,
//! alarms). `None` (with the reason printed) where `rabbitmq-server` is absent.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

const BIN: &str = "/usr/lib/rabbitmq/bin";

pub struct PrivateBroker {
    child: std::process::Child,
    pub dir: tempfile::TempDir,
    /// The AMQP (or AMQPS) port.
    pub port: u16,
    pub node: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivateBroker {
    /// Whether the node can be started here; prints why not.
    pub fn available(what: &str) -> bool {
        let server = Path::new(BIN).join("rabbitmq-server");
        if !server.exists() {
            eprintln!("SKIP: {} is absent, so {what}", server.display());
            return false;
        }
        true
    }

    /// A fresh temp folder for the node (to write certificates into before `start`).
    pub fn folder() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// Start a node in `dir` with `conf(port)` as its `rabbitmq.conf` (which sets the
    /// listeners), and wait until its port accepts connections (about 10 s on 2 cores).
    pub async fn start(
        tag: &str,
        dir: tempfile::TempDir,
        conf: impl FnOnce(u16) -> String,
    ) -> PrivateBroker {
        let d = dir.path();
        let (port, dist) = (free_port(), free_port());
        let p = |f: &str| d.join(f).display().to_string();
        std::fs::write(d.join("rabbitmq.conf"), conf(port)).unwrap();
        std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(d.join("rabbitmq-env.conf"), "").unwrap();
        let node = format!("cdc-{tag}-{}-{port}@localhost", std::process::id());
        let child = std::process::Command::new(Path::new(BIN).join("rabbitmq-server"))
            .current_dir(d)
            .env("HOME", d)
            .env("RABBITMQ_CONF_ENV_FILE", p("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_CONFIG_FILE", p("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", p("mnesia"))
            .env("RABBITMQ_LOG_BASE", p("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", p("pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start rabbitmq-server");
        let broker = PrivateBroker {
            child,
            dir,
            port,
            node,
        };
        super::eventually(
            "the private RabbitMQ node to listen",
            Duration::from_secs(90),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        broker
    }

    /// A plain AMQP node on 127.0.0.1 (user guest, vhost `/`).
    pub async fn plain(tag: &str) -> Option<PrivateBroker> {
        if !Self::available("a private RabbitMQ node cannot be started") {
            return None;
        }
        let dir = Self::folder();
        Some(
            Self::start(tag, dir, |port| {
                format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n")
            })
            .await,
        )
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// `rabbitmqctl -n <this node> args…` (this node's cookie); panics when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(Path::new(BIN).join("rabbitmqctl"))
            .env("HOME", self.dir.path())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .args(["-n", &self.node])
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "rabbitmqctl {args:?}: {text}");
        text
    }

    /// The environment that points the daemon at this node.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("RABBITMQ_HOST".into(), "127.0.0.1".into()),
            ("RABBITMQ_PORT".into(), self.port.to_string()),
            ("RABBITMQ_VHOST".into(), "/".into()),
            ("RABBITMQ_USER".into(), "guest".into()),
            ("RABBITMQ_PASSWORD".into(), "guest".into()),
        ]
    }

    /// `amqp://` URL of this node's `/` vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // SIGTERM: the node stops cleanly (and leaves epmd); SIGKILL if it does not.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A three-node RabbitMQ cluster of one test's own, started, joined and stopped by
/// `scripts/rabbit-cluster.sh` (the same script an operator runs); stopped when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// `RABBITMQ_HOSTS` for the daemon: the three nodes' AMQP addresses.
    pub hosts: String,
}

impl Cluster {
    /// Start the cluster (about 30 s on 2 cores), with the vhost `bowmark` and guest on it;
    /// `None`, with the reason printed, where it cannot start.
    pub fn start(tag: &str) -> Option<Cluster> {
        if !PrivateBroker::available("a RabbitMQ cluster cannot be started") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<String> = (0..6).map(|_| free_port().to_string()).collect();
        let out = Self::script(dir.path(), "start", &[])
            .env("CLUSTER_NAME", format!("{tag}-{}", std::process::id()))
            .env("CLUSTER_AMQP_PORTS", ports[..3].join(" "))
            .env("CLUSTER_DIST_PORTS", ports[3..].join(" "))
            .env("CLUSTER_VHOSTS", "bowmark")
            .output()
            .expect("run scripts/rabbit-cluster.sh");
        let cluster = Cluster {
            dir,
            hosts: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        };
        if !out.status.success() {
            eprintln!(
                "SKIP: scripts/rabbit-cluster.sh could not start a three-node cluster:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(cluster)
    }

    fn script(dir: &Path, cmd: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("bash");
        c.arg(super::project_root().join("scripts/rabbit-cluster.sh"))
            .arg(cmd)
            .arg(dir)
            .args(args);
        c
    }

    /// `scripts/rabbit-cluster.sh cmd DIR args…`; its stdout; panics when it fails.
    pub fn run(&self, cmd: &str, args: &[&str]) -> String {
        let out = Self::script(self.dir.path(), cmd, args)
            .output()
            .expect("run scripts/rabbit-cluster.sh");
        assert!(
            out.status.success(),
            "rabbit-cluster.sh {cmd} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Node `n` (1..=3) of `queue` on `vhost` that leads it, asked of node `ask`, with the
    /// queue's online members; `None` while the queue has no leader.
    pub fn leader(&self, ask: usize, vhost: &str, queue: &str) -> Option<(usize, usize)> {
        let out = Self::script(self.dir.path(), "ctl", &[&ask.to_string()])
            .args(["list_queues", "-p", vhost, "name", "leader", "online"])
            .args(["--formatter", "json"])
            .output()
            .ok()?;
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let row = rows.as_array()?.iter().find(|r| r["name"] == queue)?;
        let node = row["leader"].as_str()?;
        let n = (1..=3).find(|n| node.starts_with("cdc-") && node.contains(&format!("-{n}@")))?;
        Some((n, row["online"].as_array().map_or(0, Vec::len)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Self::script(self.dir.path(), "stop", &[]).output();
    }
}
