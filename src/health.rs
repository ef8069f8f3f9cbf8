//! Shared readiness state: what `/readyz` reports. Stages update it; the HTTP server reads it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

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
}

impl RoleState {
    fn from_u8(v: u8) -> RoleState {
        match v {
            1 => RoleState::Active,
            2 => RoleState::Standby,
            3 => RoleState::Stopping,
            _ => RoleState::Starting,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RoleState::Starting => "starting",
            RoleState::Active => "active",
            RoleState::Standby => "standby",
            RoleState::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    mongo: AtomicBool,
    broker: AtomicBool,
    postgres: AtomicBool,
    capture: AtomicU8,
    projector: AtomicU8,
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
    pub fn set_connected(&self, dep: Dependency, up: bool) {
        let flag = match dep {
            Dependency::Mongo => &self.0.mongo,
            Dependency::Broker => &self.0.broker,
            Dependency::Postgres => &self.0.postgres,
        };
        flag.store(up, Ordering::Relaxed);
    }

    pub fn connected(&self, dep: Dependency) -> bool {
        match dep {
            Dependency::Mongo => self.0.mongo.load(Ordering::Relaxed),
            Dependency::Broker => self.0.broker.load(Ordering::Relaxed),
            Dependency::Postgres => self.0.postgres.load(Ordering::Relaxed),
        }
    }

    pub fn set_state(&self, stage: Stage, state: RoleState) {
        self.slot(stage).store(state as u8, Ordering::Relaxed);
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
