//! The daemon's HTTP port: `/metrics` (Prometheus text), `/healthz` (200 while the
//! process lives) and `/readyz` (503 until the dependencies of the running roles are connected
//! and every role is active or standing by; the body says which).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::health::{Dependency, Health, Link, RoleState, Stage};

/// What the endpoints read.
#[derive(Clone)]
pub(crate) struct HttpState {
    metrics: PrometheusHandle,
    health: Health,
    roles: Arc<[Stage]>,
}

impl HttpState {
    /// `roles`: the stages this process runs (readiness waits for each of them).
    pub fn new(metrics: PrometheusHandle, health: Health, roles: &[Stage]) -> HttpState {
        HttpState {
            metrics,
            health,
            roles: roles.into(),
        }
    }
}

pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The backfill Job's port: `/metrics` and `/healthz` (a Job has no readiness).
pub(crate) fn metrics_router(metrics: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { render(&metrics) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serve `/metrics` and `/healthz` on `addr` until `stop` (the backfill Job's port). A port
/// that cannot be bound or a recorder that cannot be installed is logged, not fatal: the
/// backfill's work does not depend on being scraped. Returns the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    pipeline: &str,
    stop: CancellationToken,
) -> Option<SocketAddr> {
    let handle = match crate::metrics::install_recorder() {
        Ok(h) => {
            crate::metrics::zero(pipeline, false, false);
            h
        }
        Err(e) => {
            warn!(error = %e, "metrics not served");
            return None;
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "metrics not served: cannot listen");
            return None;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    info!(addr = %bound, "http listening on /metrics, /healthz");
    tokio::spawn(async move {
        let served = axum::serve(listener, metrics_router(handle))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "http server ended with an error");
        }
    });
    Some(bound)
}

/// Serve until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    state: HttpState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    render(&s.metrics)
}

/// The Prometheus text, with the process metrics sampled now.
fn render(metrics: &PrometheusHandle) -> impl IntoResponse + use<> {
    crate::metrics::collect_process();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let (ready, body) = readiness(&s.health, &s.roles);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Capture => "capture",
        Stage::Projector => "projector",
    }
}

/// Ready when the broker and PostgreSQL (and MongoDB, for capture) are connected and every
/// role is active or standing by. The body lists what is missing, or each role's state.
pub fn readiness(health: &Health, roles: &[Stage]) -> (bool, String) {
    let mut missing = Vec::new();
    let mut connecting = Vec::new();
    let mut deps = vec![
        (Dependency::Broker, "broker"),
        (Dependency::Postgres, "postgres"),
    ];
    if roles.contains(&Stage::Capture) {
        deps.insert(0, (Dependency::Mongo, "mongo"));
    }
    for (dep, name) in deps {
        match health.link(dep) {
            Link::Connected => {}
            Link::Reachable => connecting.push(format!("{name} connecting")),
            Link::Unchecked => missing.push(format!("{name} not checked yet")),
            Link::Disconnected(None) => missing.push(format!("{name} disconnected")),
            Link::Disconnected(Some(cause)) => {
                missing.push(format!("{name} disconnected ({cause})"))
            }
        }
    }
    let states: Vec<String> = roles
        .iter()
        .map(|r| format!("{} {}", stage_name(*r), health.state(*r).as_str()))
        .collect();
    for r in roles {
        match health.state(*r) {
            RoleState::Active | RoleState::Standby => {}
            RoleState::Failed => missing.push(format!(
                "{} failed ({})",
                stage_name(*r),
                health.failure().unwrap_or_default()
            )),
            other => missing.push(format!("{} {}", stage_name(*r), other.as_str())),
        }
    }
    if missing.is_empty() {
        // Only what is still connecting holds readiness back.
        missing = connecting;
    }
    if missing.is_empty() {
        (true, format!("ready: {}\n", states.join(", ")))
    } else {
        (false, format!("not ready: {}\n", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_dependencies_and_roles_are_up() {
        let h = Health::default();
        let (ok, body) = readiness(&h, &[Stage::Projector]);
        assert!(!ok);
        assert!(
            body.contains("broker not checked yet") && body.contains("projector starting"),
            "{body}"
        );
        h.set_connected(Dependency::Broker, false);
        let (_, body) = readiness(&h, &[Stage::Projector]);
        assert!(body.contains("broker disconnected"), "{body}");
        h.set_connected(Dependency::Broker, true);
        h.set_connected(Dependency::Postgres, true);
        h.set_state(Stage::Projector, RoleState::Active);
        let (ok, body) = readiness(&h, &[Stage::Projector]);
        assert!(ok, "{body}");
        assert_eq!(body, "ready: projector active\n");
        // Capture also needs MongoDB; a standby capture is ready.
        h.set_state(Stage::Capture, RoleState::Standby);
        h.set_failed(Dependency::Mongo, "server selection timed out");
        let (ok, body) = readiness(&h, &[Stage::Capture, Stage::Projector]);
        assert!(
            !ok && body.contains("mongo disconnected (server selection timed out)"),
            "{body}"
        );
        h.set_connected(Dependency::Mongo, true);
        let (ok, body) = readiness(&h, &[Stage::Capture, Stage::Projector]);
        assert!(ok && body.contains("capture standby"), "{body}");
        // A capture stopped for good is named with what to do.
        h.set_stage_failed(Stage::Capture, "history lost: run bowmark-cdc backfill");
        let (ok, body) = readiness(&h, &[Stage::Capture, Stage::Projector]);
        assert!(!ok, "{body}");
        assert_eq!(
            body,
            "not ready: capture failed (history lost: run bowmark-cdc backfill)\n"
        );
    }

    #[test]
    fn only_the_failing_dependency_is_named_with_its_cause() {
        let h = Health::default();
        h.set_connected(Dependency::Broker, true);
        h.set_connected(Dependency::Mongo, true);
        h.set_failed(
            Dependency::Postgres,
            "FATAL: role \"nobody\" does not exist (SQLSTATE 28000)",
        );
        let (ok, body) = readiness(&h, &[Stage::Capture, Stage::Projector]);
        assert!(!ok);
        assert!(
            body.contains("postgres disconnected (FATAL: role"),
            "{body}"
        );
        assert!(
            !body.contains("broker") && !body.contains("mongo"),
            "{body}"
        );
    }

    #[test]
    fn a_dependency_reached_at_start_is_not_ready_until_a_stage_connects() {
        let h = Health::default();
        h.set_connected(Dependency::Broker, true);
        h.set_connected(Dependency::Postgres, true);
        h.set_reachable(Dependency::Mongo);
        h.set_state(Stage::Capture, RoleState::Active);
        h.set_state(Stage::Projector, RoleState::Active);
        let (ok, body) = readiness(&h, &[Stage::Capture, Stage::Projector]);
        assert!(!ok, "the change stream is not open yet: {body}");
        assert_eq!(body, "not ready: mongo connecting\n");
        h.set_failed(Dependency::Postgres, "gone");
        let (_, body) = readiness(&h, &[Stage::Capture, Stage::Projector]);
        assert_eq!(body, "not ready: postgres disconnected (gone)\n");
        // A stage's report wins over the start-up check.
        h.set_connected(Dependency::Mongo, false);
        h.set_reachable(Dependency::Mongo);
        assert!(!h.connected(Dependency::Mongo));
        assert_eq!(h.link(Dependency::Mongo), Link::Disconnected(None));
    }
}
