//! Opening RabbitMQ connections. Every broker connection of the pipeline (the capture's
//! publisher, the projector, the start-up check, the operator commands) goes through
//! [`connect`]: AMQPS when `RABBITMQ_TLS=true` or `RABBITMQ_URL` is `amqps://`, trusting the CA
//! file `RABBITMQ_CA_FILE` besides the public web roots.

use std::path::Path;

use crate::config::{ConfigError, Environment, RabbitConn};
use crate::tls::{CaFile, read_ca_file};

/// Whether RabbitMQ is reached over AMQPS (`RABBITMQ_TLS`, or an `amqps://` `RABBITMQ_URL`;
/// they must agree) and the CA file (`RABBITMQ_CA_FILE`, only with AMQPS).
pub fn tls_from_env(env: &dyn Environment) -> Result<(bool, Option<CaFile>), ConfigError> {
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

/// Open an AMQP connection to `conn`: AMQPS when configured, trusting the CA file besides the
/// public web roots. Every broker connection of the pipeline goes through here.
pub async fn connect(
    conn: &RabbitConn,
    props: lapin::ConnectionProperties,
) -> lapin::Result<lapin::Connection> {
    let uri = conn.uri();
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
}
