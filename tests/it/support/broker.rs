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
