//! Opening PostgreSQL sessions. Every connection the pipeline makes (the daemon's pool, the
//! capture's lock session, `migrate`, the backfill, the operator commands) goes through
//! [`connect`], which secures it as the TLS settings say ([`crate::tls::PgTls`]): a server that
//! answers `prefer` without TLS is logged, never silently accepted; a certificate the settings
//! reject fails the connection with the mode and the CA named.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{ConfigError, Environment};
use crate::tls::{PgTls, SslMode};

/// The connection half of a session opened by [`connect`] (spawn it).
pub(crate) type PgConnection =
    Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Whether a plaintext `prefer` session was logged at warn level already (later ones log at
/// debug: a pool opens many).
static PLAINTEXT_LOGGED: AtomicBool = AtomicBool::new(false);

/// Open one session with `cfg` (host, database, user, application name, timeouts) secured by
/// `tls` (its mode overrides whatever `cfg` says).
pub async fn connect(
    cfg: &Config,
    tls: &PgTls,
) -> Result<(Client, PgConnection), tokio_postgres::Error> {
    let mut cfg = cfg.clone();
    cfg.ssl_mode(tls.mode.wire());
    let connector = Connector {
        inner: tls.connector(),
        handshook: Arc::new(AtomicBool::new(false)),
        about: Arc::from(tls.describe()),
    };
    let handshook = connector.handshook.clone();
    let session = cfg.connect(connector).await?;
    if tls.mode == SslMode::Prefer && !handshook.load(Ordering::Relaxed) {
        let hosts = target(&cfg);
        if !PLAINTEXT_LOGGED.swap(true, Ordering::Relaxed) {
            tracing::warn!(server = %hosts, "PostgreSQL does not offer TLS: this session is NOT \
                encrypted (sslmode=prefer); set POSTGRES_SSLMODE=require to refuse plaintext, or \
                disable to say plaintext is intended");
        } else {
            tracing::debug!(server = %hosts, "PostgreSQL session without TLS (sslmode=prefer)");
        }
    }
    Ok(session)
}

/// One session for a command (the backfill, an operator command): [`connect`], its connection
/// driven on a task of its own (an end logged as `what`), and the projection's scratch-table
/// notices silenced.
pub(crate) async fn command_session(
    cfg: &Config,
    tls: &PgTls,
    what: &'static str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = connect(cfg, tls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "{what}: PostgreSQL connection closed");
        }
    });
    client
        .batch_execute("SET client_min_messages TO warning")
        .await?;
    Ok(client)
}

/// `host:port` of a config, for logs.
fn target(cfg: &Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// The deadpool connector: every pooled session is opened by [`connect`].
pub(crate) struct PoolConnect(pub PgTls);

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        pg_config: &Config,
    ) -> Pin<
        Box<
            dyn Future<
                    Output = Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
                > + Send
                + '_,
        >,
    > {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let (client, connection) = connect(&pg_config, &self.0).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "pooled PostgreSQL connection ended");
                }
            });
            Ok((client, task))
        })
    }
}

/// The rustls connector, noting whether a handshake happened (`prefer` may go without).
#[derive(Clone)]
struct Connector {
    inner: MakeRustlsConnect,
    handshook: Arc<AtomicBool>,
    about: Arc<str>,
}

impl MakeTlsConnect<Socket> for Connector {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = Handshake;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Handshake, Self::Error> {
        Ok(Handshake {
            inner: MakeTlsConnect::<Socket>::make_tls_connect(&mut self.inner, domain)?,
            handshook: self.handshook.clone(),
            about: self.about.clone(),
            host: domain.to_string(),
        })
    }
}

/// One TLS handshake; its error says which settings rejected the server.
struct Handshake {
    inner: <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect,
    handshook: Arc<AtomicBool>,
    about: Arc<str>,
    host: String,
}

type HandshakeFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            > + Send,
    >,
>;

impl TlsConnect<Socket> for Handshake {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = HandshakeFuture;

    fn connect(self, stream: Socket) -> HandshakeFuture {
        self.handshook.store(true, Ordering::Relaxed);
        let Handshake {
            inner, about, host, ..
        } = self;
        Box::pin(async move {
            inner.connect(stream).await.map_err(|e| {
                format!("server {host:?} rejected by the TLS settings ({about}): {e}").into()
            })
        })
    }
}

/// The PostgreSQL TLS settings from the environment: `sslmode` and `sslrootcert` in
/// `POSTGRES_URL`, or `POSTGRES_SSLMODE` and `POSTGRES_SSLROOTCERT` (both given and different
/// is an error naming both); `prefer` by default, as libpq.
pub(crate) fn tls_from_env(env: &dyn Environment) -> Result<PgTls, ConfigError> {
    let from_url = env
        .get("POSTGRES_URL")
        .map(|u| split_url(&u))
        .unwrap_or_default();
    let pick = |url_value: Option<String>, var: &str| -> Result<Option<(String, String)>, _> {
        let key = var.trim_start_matches("POSTGRES_").to_ascii_lowercase();
        match (url_value, env.get(var)) {
            (Some(u), Some(e)) if u != e => Err(ConfigError::Env {
                name: var.to_string(),
                message: format!("{var}={e:?} disagrees with POSTGRES_URL's {key}={u:?}"),
            }),
            (Some(u), _) => Ok(Some((format!("POSTGRES_URL ({key})"), u))),
            (None, Some(e)) => Ok(Some((var.to_string(), e))),
            (None, None) => Ok(None),
        }
    };
    let mode = match pick(from_url.sslmode, "POSTGRES_SSLMODE")? {
        None => SslMode::Prefer,
        Some((setting, v)) => v.parse().map_err(|message| ConfigError::Env {
            name: setting,
            message,
        })?,
    };
    match pick(from_url.sslrootcert, "POSTGRES_SSLROOTCERT")? {
        None => PgTls::new(mode, None, "POSTGRES_SSLROOTCERT"),
        Some((setting, path)) => PgTls::new(mode, Some(path), &setting),
    }
}

/// A PostgreSQL URL given elsewhere than the environment (`verify --legacy-db`): its config and
/// TLS settings (its own `sslmode` and `sslrootcert`, `prefer` by default). Errors name
/// `setting`.
pub(crate) fn config_from_url(url: &str, setting: &str) -> Result<(Config, PgTls), String> {
    let parts = split_url(url);
    let cfg: Config = parts
        .rest
        .parse()
        .map_err(|e| format!("{setting}: not a PostgreSQL URL ({e})"))?;
    let mode = match parts.sslmode {
        None => SslMode::Prefer,
        Some(m) => m.parse().map_err(|e| format!("{setting}: {e}"))?,
    };
    let tls = PgTls::new(mode, parts.sslrootcert, setting).map_err(|e| e.to_string())?;
    Ok((cfg, tls))
}

/// `POSTGRES_URL` split into the part tokio-postgres parses and the TLS parameters it does not
/// know (`sslmode` beyond disable/prefer/require, `sslrootcert`). Both the URL form
/// (`postgresql://…?sslmode=verify-full&sslrootcert=/ca.pem`) and the key/value form
/// (`host=… sslmode=verify-full`) are understood.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct UrlTls {
    pub rest: String,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

pub(crate) fn split_url(url: &str) -> UrlTls {
    let mut out = UrlTls::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => out.sslmode = Some(value),
        "sslrootcert" => out.sslrootcert = Some(value),
        _ => {}
    };
    let is_tls = |k: &str| k == "sslmode" || k == "sslrootcert";
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return UrlTls {
                rest: url.to_string(),
                ..out
            };
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if is_tls(k) {
                let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                take(k, v.into_owned());
            } else if !pair.is_empty() {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return UrlTls { rest, ..out };
    }
    // key=value form; quoted values are left to tokio-postgres.
    let mut kept = Vec::new();
    for word in url.split_whitespace() {
        match word.split_once('=') {
            Some((k, v)) if is_tls(k) && !v.starts_with('\'') => take(k, v.to_string()),
            _ => kept.push(word),
        }
    }
    UrlTls {
        rest: kept.join(" "),
        ..out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tls_parameters_are_taken_out() {
        let u = split_url(
            "postgresql://u:p%40ss@db:5432/reports?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(
            u.rest,
            "postgresql://u:p%40ss@db:5432/reports?application_name=x"
        );
        assert_eq!(u.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(u.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let u = split_url("postgres://db/r?sslmode=require");
        assert_eq!(u.rest, "postgres://db/r");
        assert_eq!(u.sslmode.as_deref(), Some("require"));
        assert_eq!(split_url("postgres://db/r").rest, "postgres://db/r");
    }

    #[test]
    fn key_value_tls_parameters_are_taken_out() {
        let u = split_url("host=db dbname=r sslmode=verify-ca sslrootcert=/ca.pem");
        assert_eq!(u.rest, "host=db dbname=r");
        assert_eq!(u.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(u.sslrootcert.as_deref(), Some("/ca.pem"));
    }

    fn env(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sslmode_comes_from_the_url_or_the_variables_and_they_must_agree() {
        assert_eq!(tls_from_env(&env(&[])).unwrap().mode, SslMode::Prefer);
        let t = tls_from_env(&env(&[("POSTGRES_SSLMODE", "require")])).unwrap();
        assert_eq!(t.mode, SslMode::Require);
        let t = tls_from_env(&env(&[("POSTGRES_URL", "postgres://h/d?sslmode=disable")])).unwrap();
        assert_eq!(t.mode, SslMode::Disable);
        let err = tls_from_env(&env(&[
            ("POSTGRES_URL", "postgres://h/d?sslmode=disable"),
            ("POSTGRES_SSLMODE", "require"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("POSTGRES_SSLMODE") && err.contains("disable"),
            "{err}"
        );
        let err = tls_from_env(&env(&[("POSTGRES_URL", "postgres://h/d?sslmode=verify")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("POSTGRES_URL (sslmode)"), "{err}");
        let err = tls_from_env(&env(&[(
            "POSTGRES_URL",
            "postgres://h/d?sslmode=verify-full&sslrootcert=/nonexistent.pem",
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("POSTGRES_URL (sslrootcert)") && err.contains("/nonexistent.pem"),
            "{err}"
        );
    }
}
