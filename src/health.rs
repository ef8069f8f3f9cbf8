//! Shared readiness state: what `/readyz` reports. Stages update it; the HTTP server reads it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// What a role is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RoleState {
    /// Connecting or not started.
    Starting = 0,
    /// Holding the work (the capture that tails, the projector that consumes).
    Active = 1,
    /// Waiting for the leader's lock (a second capture replica).
    Standby = 2,
    /// Stopping after SIGTERM or a fatal error.
    Stopping = 3,
    /// Stopped by an error that only an operator can fix; the process stays up (unready) so
    /// that the failure is scraped and alerted on rather than lost in a restart loop.
    Failed = 4,
}

impl RoleState {
    fn from_u8(v: u8) -> RoleState {
        match v {
            1 => RoleState::Active,
            2 => RoleState::Standby,
            3 => RoleState::Stopping,
            4 => RoleState::Failed,
            _ => RoleState::Starting,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RoleState::Starting => "starting",
            RoleState::Active => "active",
            RoleState::Standby => "standby",
            RoleState::Stopping => "stopping",
            RoleState::Failed => "failed",
        }
    }
}

/// What is known about a dependency's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// Not tried yet.
    Unchecked,
    /// A start-up check reached it; no stage uses it yet (not ready, but not the problem).
    Reachable,
    Connected,
    /// Down, with the cause when one is known (the server's message).
    Disconnected(Option<String>),
}

#[derive(Debug, Default)]
struct DepSlot {
    /// 0 unchecked, 1 connected, 2 disconnected, 3 reachable.
    state: AtomicU8,
    cause: Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct Inner {
    mongo: DepSlot,
    broker: DepSlot,
    postgres: DepSlot,
    capture: AtomicU8,
    projector: AtomicU8,
    /// Why a role is [`RoleState::Failed`] (what the operator must do).
    failure: Mutex<Option<String>>,
}

/// Cheap to clone; every clone sees the same state.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Inner>);

/// A dependency whose connection state is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Mongo,
    Broker,
    Postgres,
}

/// A role whose state is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Capture,
    Projector,
}

impl Health {
    fn dep(&self, dep: Dependency) -> &DepSlot {
        match dep {
            Dependency::Mongo => &self.0.mongo,
            Dependency::Broker => &self.0.broker,
            Dependency::Postgres => &self.0.postgres,
        }
    }

    fn set_cause(&self, dep: Dependency, cause: Option<String>) {
        let mut slot = self
            .dep(dep)
            .cause
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *slot = cause;
    }

    /// Connected, or down without a known cause.
    pub(crate) fn set_connected(&self, dep: Dependency, up: bool) {
        self.set_cause(dep, None);
        self.dep(dep)
            .state
            .store(if up { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// Down, with the cause (shown by `/readyz`).
    pub(crate) fn set_failed(&self, dep: Dependency, cause: impl Into<String>) {
        self.set_cause(dep, Some(cause.into()));
        self.dep(dep).state.store(2, Ordering::Relaxed);
    }

    /// A start-up check reached `dep`: recorded only while nothing else is known, so a stage's
    /// own report always wins and readiness still waits for the stage.
    pub(crate) fn set_reachable(&self, dep: Dependency) {
        let _ = self
            .dep(dep)
            .state
            .compare_exchange(0, 3, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn connected(&self, dep: Dependency) -> bool {
        self.dep(dep).state.load(Ordering::Relaxed) == 1
    }

    /// What is known about `dep`.
    pub(crate) fn link(&self, dep: Dependency) -> Link {
        match self.dep(dep).state.load(Ordering::Relaxed) {
            0 => Link::Unchecked,
            1 => Link::Connected,
            3 => Link::Reachable,
            _ => Link::Disconnected(
                self.dep(dep)
                    .cause
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            ),
        }
    }

    pub(crate) fn set_state(&self, stage: Stage, state: RoleState) {
        self.slot(stage).store(state as u8, Ordering::Relaxed);
    }

    /// `stage` stopped for good: `/readyz` shows `cause` until the process restarts.
    pub(crate) fn set_stage_failed(&self, stage: Stage, cause: impl Into<String>) {
        *self.0.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(cause.into());
        self.set_state(stage, RoleState::Failed);
    }

    /// The cause given to [`Health::set_stage_failed`].
    pub fn failure(&self) -> Option<String> {
        self.0
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn state(&self, stage: Stage) -> RoleState {
        RoleState::from_u8(self.slot(stage).load(Ordering::Relaxed))
    }

    fn slot(&self, stage: Stage) -> &AtomicU8 {
        match stage {
            Stage::Capture => &self.0.capture,
            Stage::Projector => &self.0.projector,
        }
    }
}
