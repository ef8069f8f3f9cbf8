//! TLS against the local PostgreSQL (started with `ssl = on` and its own certificate): every
//! `sslmode` as a user sets it, through the one connect function the pipeline uses, the
//! daemon's pool, the capture's lock session and the `migrate` binary; and `prefer` meeting a
//! server that refuses TLS (a relay in front of the real server answers the TLS request "no").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bowmark_cdc::config::Settings;

use crate::support::{self, TestDb};

/// The server's certificate file (it is self-signed, so it is its own CA), or `None` with the
/// reason printed when the server has TLS off or the file cannot be read.
async fn server_cert() -> Option<PathBuf> {
    let admin = support::pg_connect("postgres").await;
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    if ssl != "on" {
        eprintln!("SKIP: the test PostgreSQL runs with ssl = off, so TLS cannot be tested");
        return None;
    }
    let file: String = admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let path = PathBuf::from(file);
    if std::fs::read(&path).is_err() {
        eprintln!(
            "SKIP: the server's certificate {} is not readable by the tests",
            path.display()
        );
        return None;
    }
    Some(path)
}

fn settings(db: &TestDb, extra: &[(&str, &str)]) -> Result<Settings, String> {
    let pg = db.conn();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("POSTGRES_HOST".into(), pg.host.clone());
    env.insert("POSTGRES_PORT".into(), pg.port.to_string());
    env.insert("POSTGRES_USER".into(), pg.user.clone());
    env.insert("POSTGRES_DB".into(), db.name.clone());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    Settings::resolve(support::pipeline("paving"), &env).map_err(|e| e.to_string())
}

/// Connect as the pipeline does; `Ok(encrypted)` from `pg_stat_ssl`, or the error's text.
async fn session_encrypted(s: &Settings) -> Result<bool, String> {
    let cfg = s.postgres.pg_config().map_err(|e| e.to_string())?;
    let (client, conn) = bowmark_cdc::pg::connect(&cfg, &s.postgres.tls)
        .await
        .map_err(|e| bowmark_cdc::cause::chain(&e))?;
    tokio::spawn(conn);
    encrypted(&client).await
}

async fn encrypted(client: &tokio_postgres::Client) -> Result<bool, String> {
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// A self-signed CA that signed nothing the server holds, made with `openssl`.
fn other_ca(dir: &std::path::Path) -> Option<PathBuf> {
    let cert = dir.join("other-ca.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=bowmark-cdc test CA"])
        .arg("-keyout")
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&cert)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(cert),
        Ok(o) => {
            eprintln!(
                "SKIP: openssl could not make a test CA: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("SKIP: openssl is needed to make a test CA: {e}");
            None
        }
    }
}

#[tokio::test]
async fn require_encrypts_and_disable_does_not() {
    // Given a server with TLS on
    if server_cert().await.is_none() {
        return;
    }
    let db = TestDb::new().await;
    // When the pipeline connects with sslmode=require (variable) or in the URL
    let s = settings(&db, &[("POSTGRES_SSLMODE", "require")]).unwrap();
    // Then the session is encrypted
    assert_eq!(session_encrypted(&s).await, Ok(true));
    let url = format!(
        "postgresql://{}@{}:{}/{}?sslmode=require",
        s.postgres.user, s.postgres.host, s.postgres.port, db.name
    );
    let s = settings(&db, &[("POSTGRES_URL", &url)]).unwrap();
    assert_eq!(session_encrypted(&s).await, Ok(true));
    // And the default (prefer) encrypts too when the server offers TLS
    let s = settings(&db, &[]).unwrap();
    assert_eq!(session_encrypted(&s).await, Ok(true));
    // And sslmode=disable still connects, in plaintext
    let s = settings(&db, &[("POSTGRES_SSLMODE", "disable")]).unwrap();
    assert_eq!(session_encrypted(&s).await, Ok(false));
}

#[tokio::test]
async fn verify_full_checks_the_ca_and_the_host_name() {
    // Given the server's own certificate as the CA, issued for "localhost"
    let Some(ca) = server_cert().await else {
        return;
    };
    let ca = ca.to_str().unwrap();
    let db = TestDb::new().await;
    // When the pipeline connects to "localhost" with verify-full
    let s = settings(
        &db,
        &[
            ("POSTGRES_HOST", "localhost"),
            ("POSTGRES_SSLMODE", "verify-full"),
            ("POSTGRES_SSLROOTCERT", ca),
        ],
    )
    .unwrap();
    // Then it connects, encrypted
    assert_eq!(session_encrypted(&s).await, Ok(true));
    // When it connects by address, which the certificate does not name
    let s = settings(
        &db,
        &[
            ("POSTGRES_HOST", "127.0.0.1"),
            ("POSTGRES_SSLMODE", "verify-full"),
            ("POSTGRES_SSLROOTCERT", ca),
        ],
    )
    .unwrap();
    // Then verify-full refuses, saying why
    let err = session_encrypted(&s).await.unwrap_err();
    assert!(
        err.contains("verify-full") && err.contains("not valid for name"),
        "{err}"
    );
    // And verify-ca (the chain only, as libpq) accepts it
    let url = format!(
        "postgresql://{}@127.0.0.1:{}/{}?sslmode=verify-ca&sslrootcert={ca}",
        s.postgres.user, s.postgres.port, db.name
    );
    let s = settings(&db, &[("POSTGRES_URL", &url)]).unwrap();
    assert_eq!(session_encrypted(&s).await, Ok(true));
}

#[tokio::test]
async fn a_wrong_ca_fails_with_an_error_naming_the_mode_and_the_file() {
    if server_cert().await.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(wrong) = other_ca(dir.path()) else {
        return;
    };
    let wrong = wrong.to_str().unwrap();
    let db = TestDb::new().await;
    // Given verify-full against a CA that did not sign the server's certificate
    let s = settings(
        &db,
        &[
            ("POSTGRES_HOST", "localhost"),
            ("POSTGRES_SSLMODE", "verify-full"),
            ("POSTGRES_SSLROOTCERT", wrong),
        ],
    )
    .unwrap();
    // Then the connection fails, naming the mode, the CA file and the cause
    let err = session_encrypted(&s).await.unwrap_err();
    assert!(err.contains("sslmode=verify-full"), "{err}");
    assert!(err.contains(wrong), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    // And the `migrate` binary says the same and exits non-zero
    let out = support::cdc_bin()
        .args(["migrate", "--pipeline", "pipeline/paving.toml"])
        .envs(support::child_env(&db, None, None))
        .env("POSTGRES_HOST", "localhost")
        .env("POSTGRES_SSLMODE", "verify-full")
        .env("POSTGRES_SSLROOTCERT", wrong)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("UnknownIssuer") && stderr.contains(wrong),
        "{stderr}"
    );
    // And a missing CA file stops at start, naming the variable (exit 2: configuration)
    let out = support::cdc_bin()
        .args(["migrate", "--pipeline", "pipeline/paving.toml"])
        .envs(support::child_env(&db, None, None))
        .env("POSTGRES_SSLMODE", "verify-ca")
        .env("POSTGRES_SSLROOTCERT", dir.path().join("absent.pem"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("POSTGRES_SSLROOTCERT"), "{stderr}");
}

#[tokio::test]
async fn the_pool_the_lock_session_and_migrate_connect_with_verify_full() {
    let Some(ca) = server_cert().await else {
        return;
    };
    let ca = ca.to_str().unwrap();
    let db = TestDb::new().await;
    let tls = [
        ("POSTGRES_HOST", "localhost"),
        ("POSTGRES_SSLMODE", "verify-full"),
        ("POSTGRES_SSLROOTCERT", ca),
    ];
    // When `migrate` runs with verify-full
    let out = support::cdc_bin()
        .args(["migrate", "--pipeline", "pipeline/paving.toml"])
        .envs(support::child_env(&db, None, None))
        .envs(tls)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Then the daemon's pool and the capture's lock session are encrypted too
    let s = settings(&db, &tls).unwrap();
    let pool = bowmark_cdc::runtime::make_pool(&s).unwrap();
    let pooled = pool.get().await.unwrap();
    assert_eq!(encrypted(&pooled).await, Ok(true));
    let lease = bowmark_cdc::capture::leader::Lease::connect(&s.postgres)
        .await
        .unwrap();
    assert_eq!(encrypted(&lease.client).await, Ok(true));
}

/// A relay to the test server that answers PostgreSQL's TLS request with "N" (as a server
/// with ssl = off does) and then passes the session through unchanged.
async fn relay_refusing_tls() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let pg = support::pg_conn("postgres");
    let upstream = format!("{}:{}", pg.host, pg.port);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).await.is_err() {
                    return;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                if first == SSL_REQUEST {
                    if client.write_all(b"N").await.is_err() {
                        return;
                    }
                } else if server.write_all(&first).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    port
}

// Multi-threaded: the relay keeps running while the test waits for the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_says_so_when_the_server_offers_no_tls_and_require_refuses() {
    // Given a server that answers the TLS request "no"
    let port = relay_refusing_tls().await.to_string();
    let db = TestDb::new().await;
    // When `migrate` connects with the default sslmode (prefer)
    let out = support::cdc_bin()
        .args(["migrate", "--pipeline", "pipeline/paving.toml"])
        .envs(support::child_env(&db, None, None))
        .env("POSTGRES_PORT", &port)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Then it works, and the log says the session is not encrypted
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not offer TLS") && stderr.contains("NOT encrypted"),
        "{stderr}"
    );
    // When sslmode=require
    let out = support::cdc_bin()
        .args(["migrate", "--pipeline", "pipeline/paving.toml"])
        .envs(support::child_env(&db, None, None))
        .env("POSTGRES_PORT", &port)
        .env("POSTGRES_SSLMODE", "require")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Then it refuses to connect in plaintext
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("server does not support TLS"), "{stderr}");
    // And with sslmode=disable there is no warning
    let out = support::cdc_bin()
        .args(["migrate", "--pipeline", "pipeline/paving.toml"])
        .envs(support::child_env(&db, None, None))
        .env("POSTGRES_PORT", &port)
        .env("POSTGRES_SSLMODE", "disable")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("does not offer TLS"), "{stderr}");
}

#[tokio::test]
async fn amqps_from_the_parts_builds_an_amqps_url_on_5671() {
    let db = TestDb::new().await;
    let s = settings(&db, &[("RABBITMQ_TLS", "true"), ("RABBITMQ_HOST", "mq")]).unwrap();
    let uri = s.rabbitmq.uri();
    assert!(
        uri.expose().starts_with("amqps://") && uri.expose().contains("@mq:5671/"),
        "{uri:?}"
    );
    let err = settings(&db, &[("RABBITMQ_CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
    assert!(err.contains("RABBITMQ_CA_FILE"), "{err}");
}

// --- AMQPS: a private RabbitMQ node with a TLS listener -------------------------------------

/// A RabbitMQ node of this test's own (own node name, ports, config and data under a temp
/// folder) listening only on AMQPS with a certificate for "localhost" signed by a test CA.
struct TlsBroker {
    node: support::broker::PrivateBroker,
    port: u16,
}

impl TlsBroker {
    /// `None` (with the reason printed) when `rabbitmq-server` or `openssl` is missing.
    async fn start() -> Option<TlsBroker> {
        use crate::support::broker::PrivateBroker;
        if !PrivateBroker::available("AMQPS cannot be tested") {
            return None;
        }
        let dir = PrivateBroker::folder();
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        let openssl = |args: &[&str]| {
            std::process::Command::new("openssl")
                .current_dir(d)
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let made = openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=bowmark-cdc test broker CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]) && openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]) && openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        if !made {
            eprintln!("SKIP: openssl could not make the test broker's certificates");
            return None;
        }
        let p = |f: &str| d.join(f).display().to_string();
        let conf = |port: u16| {
            format!(
                "listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {}\nssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\nssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                p("ca.pem"),
                p("server.pem"),
                p("server.key")
            )
        };
        // (up when a TLS client can connect: about 10 s on 2 cores)
        let node = PrivateBroker::start("tls", dir, conf).await;
        let port = node.port;
        Some(TlsBroker { node, port })
    }

    fn ca(&self) -> String {
        self.node.path("ca.pem").display().to_string()
    }

    fn settings(&self, db: &TestDb, extra: &[(&str, &str)]) -> Result<Settings, String> {
        let port = self.port.to_string();
        let mut env = vec![
            ("RABBITMQ_HOST", "localhost"),
            ("RABBITMQ_PORT", port.as_str()),
            ("RABBITMQ_VHOST", "/"),
        ];
        env.extend_from_slice(extra);
        settings(db, &env)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca_through_the_parts_or_the_url() {
    // Given a broker that speaks only AMQPS, with a certificate from a private CA
    let Some(broker) = TlsBroker::start().await else {
        return;
    };
    let db = TestDb::new().await;
    let ca = broker.ca();
    // When the capture's publisher connects through the parts (RABBITMQ_TLS, RABBITMQ_CA_FILE)
    let s = broker
        .settings(&db, &[("RABBITMQ_TLS", "true"), ("RABBITMQ_CA_FILE", &ca)])
        .unwrap();
    let connected = eventually_connect(&s).await;
    // Then it connects (confirm mode) and declares the topology
    let publisher = connected.expect("AMQPS through the parts");
    publisher.close().await;
    // And an amqps:// RABBITMQ_URL with the CA file works too
    let url = format!("amqps://guest:guest@localhost:{}/%2f", broker.port);
    let s = broker
        .settings(&db, &[("RABBITMQ_URL", &url), ("RABBITMQ_CA_FILE", &ca)])
        .unwrap();
    let conn = bowmark_cdc::amqp::connect(&s.rabbitmq, lapin::ConnectionProperties::default())
        .await
        .expect("AMQPS through the URL");
    conn.close(200, "bye".into()).await.unwrap();
    // And without the CA the broker's certificate is refused
    let s = broker.settings(&db, &[("RABBITMQ_TLS", "true")]).unwrap();
    let err = bowmark_cdc::amqp::connect(&s.rabbitmq, lapin::ConnectionProperties::default())
        .await
        .err()
        .map(|e| bowmark_cdc::cause::chain(&e))
        .expect("an unknown CA is refused");
    assert!(err.contains("UnknownIssuer"), "{err}");
}

/// The publisher over AMQPS, retried while the fresh node finishes starting.
async fn eventually_connect(
    s: &Settings,
) -> Result<bowmark_cdc::publish::Publisher, bowmark_cdc::publish::PublishError> {
    let start = std::time::Instant::now();
    loop {
        let name = "bowmark-cdc tls test";
        match bowmark_cdc::publish::Publisher::connect(&s.rabbitmq, &s.pipeline, name, true).await {
            Ok(p) => return Ok(p),
            Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
