//! Where the services are and how to log in: the environment on top of the pipeline file.

use super::*;

/// Where the services are and how to log in: the environment on top of the pipeline file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pipeline: Pipeline,
    pub mongo_uri: Secret,
    pub postgres: PostgresConn,
    pub rabbitmq: RabbitConn,
}

#[derive(Debug, Clone)]
pub struct PostgresConn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub database: String,
    /// `POSTGRES_URL`, when given, overrides the parts.
    pub url: Option<Secret>,
    /// `sslmode` and its CA (`POSTGRES_SSLMODE`, `POSTGRES_SSLROOTCERT` or the URL's).
    pub tls: crate::tls::PgTls,
}

impl PostgresConn {
    /// A tokio-postgres config for this connection.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        if let Some(url) = &self.url {
            let mut c: tokio_postgres::Config = crate::pg::split_url(url.expose())
                .rest
                .parse()
                .map_err(|e: tokio_postgres::Error| ConfigError::Env {
                    name: "POSTGRES_URL".into(),
                    message: format!("not a PostgreSQL URL: {e}"),
                })?;
            c.ssl_mode(self.tls.mode.wire());
            return Ok(c);
        }
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database);
        if !self.password.expose().is_empty() {
            c.password(self.password.expose());
        }
        c.application_name("bowmark-cdc");
        c.ssl_mode(self.tls.mode.wire());
        Ok(c)
    }

    /// The same server, another database (used by tests and the services script).
    pub fn with_database(&self, database: &str) -> PostgresConn {
        PostgresConn {
            database: database.to_string(),
            url: None,
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone)]
pub struct RabbitConn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub vhost: String,
    /// `RABBITMQ_URL`, when given, overrides the parts.
    pub url: Option<Secret>,
    /// AMQPS (`RABBITMQ_TLS=true` or an `amqps://` URL).
    pub tls: bool,
    /// `RABBITMQ_CA_FILE`: the broker's CA, beside the public web roots.
    pub ca: Option<crate::tls::CaFile>,
    /// `RABBITMQ_HOSTS`: the nodes of a cluster, tried in turn (overrides `host` and `port`).
    pub hosts: crate::amqp::HostList,
}

impl RabbitConn {
    /// The AMQP URI of each node (secrets: they hold the password), in the configured order:
    /// one per `RABBITMQ_HOSTS` entry or `RABBITMQ_URL` address, else `host` and `port`.
    pub(crate) fn uris(&self) -> Vec<Secret> {
        if let Some(url) = &self.url {
            return crate::amqp::split_url(url.expose())
                .into_iter()
                .map(Secret::new)
                .collect();
        }
        if self.hosts.nodes.is_empty() {
            return vec![self.uri_of(&self.host, self.port)];
        }
        let nodes = &self.hosts.nodes;
        nodes.iter().map(|(h, p)| self.uri_of(h, *p)).collect()
    }

    /// The AMQP URI (a secret: it holds the password); of the first node of a cluster.
    pub fn uri(&self) -> Secret {
        self.uris().swap_remove(0)
    }

    fn uri_of(&self, host: &str, port: u16) -> Secret {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        Secret::new(format!(
            "{}://{}:{}@{}:{}/{}",
            if self.tls { "amqps" } else { "amqp" },
            enc(&self.user),
            enc(self.password.expose()),
            host,
            port,
            enc(&self.vhost)
        ))
    }
}

/// Environment lookups, injectable for tests.
pub trait Environment {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub(crate) struct ProcessEnv;

impl Environment for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Environment for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

fn env_port(env: &dyn Environment, name: &str, default: u16) -> Result<u16, ConfigError> {
    match env.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError::Env {
            name: name.into(),
            message: format!("{v:?} is not a port number"),
        }),
    }
}

impl Settings {
    /// Apply the environment to a validated pipeline.
    pub fn resolve(pipeline: Pipeline, env: &dyn Environment) -> Result<Settings, ConfigError> {
        let postgres = PostgresConn {
            host: env
                .get("POSTGRES_HOST")
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: env_port(env, "POSTGRES_PORT", 5432)?,
            user: env
                .get("POSTGRES_USER")
                .unwrap_or_else(|| "postgres".into()),
            password: Secret::new(env.get("POSTGRES_PASSWORD").unwrap_or_default()),
            database: env
                .get("POSTGRES_DB")
                .unwrap_or_else(|| pipeline.postgres_database.clone()),
            url: env.get("POSTGRES_URL").map(Secret::new),
            tls: crate::pg::tls_from_env(env)?,
        };
        postgres.pg_config()?;
        let (amqps, ca) = crate::amqp::tls_from_env(env)?;
        let rabbitmq_port = env_port(env, "RABBITMQ_PORT", if amqps { 5671 } else { 5672 })?;
        let rabbitmq = RabbitConn {
            host: env
                .get("RABBITMQ_HOST")
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: rabbitmq_port,
            user: env.get("RABBITMQ_USER").unwrap_or_else(|| "guest".into()),
            password: Secret::new(
                env.get("RABBITMQ_PASSWORD")
                    .unwrap_or_else(|| "guest".into()),
            ),
            vhost: env
                .get("RABBITMQ_VHOST")
                .unwrap_or_else(|| pipeline.vhost.clone()),
            url: env.get("RABBITMQ_URL").map(Secret::new),
            tls: amqps,
            ca,
            hosts: crate::amqp::hosts_from_env(env, rabbitmq_port)?,
        };
        if let Some(url) = &rabbitmq.url
            && !url.expose().starts_with("amqp://")
            && !url.expose().starts_with("amqps://")
        {
            return Err(ConfigError::Env {
                name: "RABBITMQ_URL".into(),
                message: "must start with amqp:// or amqps://".into(),
            });
        }
        let mongo_uri = Secret::new(
            env.get("MONGO_URI")
                .unwrap_or_else(|| DEFAULT_MONGO_URI.into()),
        );
        if !mongo_uri.expose().starts_with("mongodb://")
            && !mongo_uri.expose().starts_with("mongodb+srv://")
        {
            return Err(ConfigError::Env {
                name: "MONGO_URI".into(),
                message: "must start with mongodb:// or mongodb+srv://".into(),
            });
        }
        let pipeline = pipeline.with_uri_database(&mongo_uri)?;
        Ok(Settings {
            pipeline,
            mongo_uri,
            postgres,
            rabbitmq,
        })
    }

    /// Load the file and apply the process environment.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        Settings::resolve(Pipeline::load(path)?, &ProcessEnv)
    }
}
