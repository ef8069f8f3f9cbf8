//! Opening RabbitMQ connections. Every broker connection of the pipeline (the capture's
//! publisher, the projector, the start-up check, the operator commands) goes through
//! [`connect`]: AMQPS when `RABBITMQ_TLS=true` or `RABBITMQ_URL` is `amqps://`, trusting the CA
//! file `RABBITMQ_CA_FILE` besides the public web roots.
//!
//! A cluster is a list of nodes (`RABBITMQ_HOSTS=a:5672,b:5672,c:5672`, or several addresses
//! in `RABBITMQ_URL`): [`connect`] tries them in turn, starting with the node that accepted the
//! last connection, so a reconnect after a node dies lands on the next live one.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::{ConfigError, Environment, RabbitConn, Secret};
use crate::tls::{CaFile, read_ca_file};

/// Whether RabbitMQ is reached over AMQPS (`RABBITMQ_TLS`, or an `amqps://` `RABBITMQ_URL`;
/// they must agree) and the CA file (`RABBITMQ_CA_FILE`, only with AMQPS).
pub(crate) fn tls_from_env(env: &dyn Environment) -> Result<(bool, Option<CaFile>), ConfigError> {
    let err = |name: &str, message: String| ConfigError::Env {
        name: name.to_string(),
        message,
    };
    let flag = match env.get("RABBITMQ_TLS").as_deref() {
        None => None,
        Some("true" | "1" | "yes" | "on") => Some(true),
        Some("false" | "0" | "no" | "off") => Some(false),
        Some(other) => {
            return Err(err(
                "RABBITMQ_TLS",
                format!("{other:?} is not true or false"),
            ));
        }
    };
    let url_tls = env.get("RABBITMQ_URL").map(|u| u.starts_with("amqps://"));
    let tls = match (flag, url_tls) {
        (Some(f), Some(u)) if f != u => {
            return Err(err(
                "RABBITMQ_TLS",
                format!(
                    "RABBITMQ_TLS={f} disagrees with RABBITMQ_URL's scheme ({})",
                    if u { "amqps://" } else { "amqp://" }
                ),
            ));
        }
        (_, Some(u)) => u,
        (Some(f), None) => f,
        (None, None) => false,
    };
    let ca = match env.get("RABBITMQ_CA_FILE") {
        None => None,
        Some(_) if !tls => {
            return Err(err(
                "RABBITMQ_CA_FILE",
                "is set but the broker connection is not TLS: set RABBITMQ_TLS=true or use an \
                 amqps:// RABBITMQ_URL"
                    .into(),
            ));
        }
        Some(path) => Some(read_ca_file("RABBITMQ_CA_FILE", Path::new(&path))?),
    };
    Ok((tls, ca))
}

/// How long one node may take to accept a connection before the next one is tried.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The nodes of a broker cluster (`RABBITMQ_HOSTS`), and where the next connect starts.
#[derive(Debug, Clone, Default)]
pub struct HostList {
    /// Host and port of each node, in the configured order; empty: the single host.
    pub nodes: Vec<(String, u16)>,
    /// Index of the node that accepted the last connection (shared by the clones).
    next: Arc<AtomicUsize>,
}

impl HostList {
    pub fn new(nodes: Vec<(String, u16)>) -> HostList {
        HostList {
            nodes,
            next: Arc::default(),
        }
    }
}

/// `RABBITMQ_HOSTS`: `host[:port]` separated by commas (a missing port is `default_port`). It
/// overrides `RABBITMQ_HOST` (a Secret may keep providing it); beside `RABBITMQ_URL` it is an
/// error.
pub(crate) fn hosts_from_env(
    env: &dyn Environment,
    default_port: u16,
) -> Result<HostList, ConfigError> {
    let Some(text) = env.get("RABBITMQ_HOSTS") else {
        return Ok(HostList::default());
    };
    let err = |message: String| ConfigError::Env {
        name: "RABBITMQ_HOSTS".into(),
        message,
    };
    if env.get("RABBITMQ_URL").is_some() {
        return Err(err(
            "is set together with RABBITMQ_URL: set one of them".into()
        ));
    }
    let mut nodes = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let node = match item.rsplit_once(':') {
            Some((host, port)) if !item.ends_with(']') => {
                let port = port
                    .parse()
                    .map_err(|_| err(format!("{item:?}: {port:?} is not a port number")))?;
                (host.to_string(), port)
            }
            _ => (item.to_string(), default_port),
        };
        if node.0.is_empty() {
            return Err(err(format!("{item:?} has no host name")));
        }
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(err("lists no host".into()));
    }
    Ok(HostList::new(nodes))
}

/// The URIs of a `RABBITMQ_URL` naming several nodes, one per node: either URLs separated by
/// commas (`amqp://u:p@a/v,amqp://u:p@b/v`) or several hosts in one URL
/// (`amqp://u:p@a:5672,b:5672/v`). A URL of one node is returned as it is.
pub(crate) fn split_url(url: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for part in url.split(',') {
        match urls.last_mut() {
            Some(last) if !part.starts_with("amqp://") && !part.starts_with("amqps://") => {
                last.push(',');
                last.push_str(part);
            }
            _ => urls.push(part.to_string()),
        }
    }
    urls.iter().flat_map(|u| split_authority(u)).collect()
}

/// `scheme://[userinfo@]h1,h2/rest` as one URL per host.
fn split_authority(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let urls: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{userinfo}{h}{tail}"))
        .collect();
    if urls.is_empty() {
        // (no host: the client's default, as before)
        return vec![url.to_string()];
    }
    urls
}

/// The node a URI names (`host:port`, for logs: never the password).
fn node_of(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    authority
        .rfind('@')
        .map_or(authority, |at| &authority[at + 1..])
}

/// Open an AMQP connection to `conn`: AMQPS when configured, trusting the CA file besides the
/// public web roots. Every broker connection of the pipeline goes through here. With several
/// nodes, each is tried in turn (at most [`CONNECT_TIMEOUT`] each) from the one that accepted
/// the last connection; the error is the last node's.
pub async fn connect(
    conn: &RabbitConn,
    props: lapin::ConnectionProperties,
) -> lapin::Result<lapin::Connection> {
    let uris = conn.uris();
    let n = uris.len();
    let start = conn.hosts.next.load(Ordering::Relaxed) % n;
    let mut last_err = None;
    for i in 0..n {
        let at = (start + i) % n;
        let uri = &uris[at];
        let attempt = connect_one(conn, uri, props.clone());
        let result = if n == 1 {
            attempt.await
        } else {
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {CONNECT_TIMEOUT:?}"),
                )
                .into()),
            }
        };
        match result {
            Ok(c) => {
                if at != start {
                    tracing::info!(
                        node = node_of(uri.expose()),
                        "connected to the next broker node"
                    );
                }
                conn.hosts.next.store(at, Ordering::Relaxed);
                return Ok(c);
            }
            Err(e) => {
                if n > 1 {
                    tracing::warn!(node = node_of(uri.expose()), error = %e,
                        "broker node refused the connection; trying the next one");
                }
                last_err = Some(e);
            }
        }
    }
    // The next attempt starts after the node that failed first.
    conn.hosts.next.store((start + 1) % n, Ordering::Relaxed);
    Err(last_err.expect("at least one broker URI"))
}

async fn connect_one(
    conn: &RabbitConn,
    uri: &Secret,
    props: lapin::ConnectionProperties,
) -> lapin::Result<lapin::Connection> {
    let Some(ca) = &conn.ca else {
        return lapin::Connection::connect(uri.expose(), props).await;
    };
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(ca.pem.clone()),
    };
    let runtime = lapin::runtime::default_runtime()?;
    lapin::Connection::connect_with_config(uri.expose(), props, tls, runtime).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn amqps_comes_from_the_flag_or_the_url_scheme() {
        assert!(!tls_from_env(&env(&[])).unwrap().0);
        assert!(tls_from_env(&env(&[("RABBITMQ_TLS", "true")])).unwrap().0);
        assert!(
            tls_from_env(&env(&[("RABBITMQ_URL", "amqps://h/v")]))
                .unwrap()
                .0
        );
        let err = tls_from_env(&env(&[
            ("RABBITMQ_TLS", "true"),
            ("RABBITMQ_URL", "amqp://h/v"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("RABBITMQ_TLS") && err.contains("amqp://"),
            "{err}"
        );
        let err = tls_from_env(&env(&[("RABBITMQ_CA_FILE", "/ca.pem")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("RABBITMQ_CA_FILE") && err.contains("RABBITMQ_TLS=true"),
            "{err}"
        );
        let err = tls_from_env(&env(&[("RABBITMQ_TLS", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("RABBITMQ_TLS"), "{err}");
    }

    #[test]
    fn a_host_list_names_each_node_with_the_default_port_where_none_is_given() {
        let hosts = hosts_from_env(&env(&[("RABBITMQ_HOSTS", "a:5673, b ,[::1]")]), 5672);
        assert_eq!(
            hosts.unwrap().nodes,
            [
                ("a".into(), 5673),
                ("b".into(), 5672),
                ("[::1]".into(), 5672)
            ]
        );
        assert!(hosts_from_env(&env(&[]), 5672).unwrap().nodes.is_empty());
        let err = hosts_from_env(&env(&[("RABBITMQ_HOSTS", "a:x")]), 5672).unwrap_err();
        assert!(err.to_string().contains("not a port"), "{err}");
        let over = env(&[("RABBITMQ_HOSTS", "a"), ("RABBITMQ_HOST", "h")]);
        assert_eq!(hosts_from_env(&over, 1).unwrap().nodes, [("a".into(), 1)]);
        let both = env(&[("RABBITMQ_HOSTS", "a,b"), ("RABBITMQ_URL", "amqp://h/v")]);
        let err = hosts_from_env(&both, 5672).unwrap_err().to_string();
        assert!(err.contains("RABBITMQ_URL"), "{err}");
    }

    #[test]
    fn a_url_of_several_nodes_splits_into_one_url_per_node() {
        let want = [
            "amqp://u:p%2C@a:1/v?heartbeat=5",
            "amqp://u:p%2C@b:2/v?heartbeat=5",
        ];
        assert_eq!(split_url("amqp://u:p%2C@a:1,b:2/v?heartbeat=5"), want);
        assert_eq!(split_url(&want.join(",")), want);
        assert_eq!(split_url("amqps://h/v"), ["amqps://h/v"]);
        assert_eq!(split_url("amqp:///v"), ["amqp:///v"]);
        assert_eq!(node_of(want[1]), "b:2");
    }
}
