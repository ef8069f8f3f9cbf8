//! The one-member replica set as the driver sees it: hello/isMaster, step-down and recovery.

use std::time::{Duration, Instant};

use bson::{Bson, DateTime, Document, doc, oid::ObjectId};

use crate::state::State;

#[derive(Debug, Default)]
pub struct Topology {
    /// Secondary until this instant.
    pub down_until: Option<Instant>,
    /// Bumped on every election; `electionId` never decreases.
    pub election: u32,
    /// topologyVersion counter, bumped on every state change.
    pub counter: i64,
}

impl Topology {
    /// Primary now? Folds an elapsed step-down back into "primary" (a new election).
    pub fn is_primary(&mut self) -> bool {
        match self.down_until {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                self.down_until = None;
                self.election += 1;
                self.counter += 1;
                true
            }
            None => true,
        }
    }

    pub fn step_down(&mut self, d: Duration) {
        self.down_until = Some(Instant::now() + d.min(Duration::from_secs(86_400)));
        self.counter += 1;
    }

    pub fn election_id(&self) -> ObjectId {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        b[8..12].copy_from_slice(&(self.election + 1).to_be_bytes());
        ObjectId::from_bytes(b)
    }
}

/// The hello / isMaster reply of the (possibly stepped-down) member.
pub fn hello(state: &mut State, host: &str, process_id: ObjectId, conn_id: u32) -> Document {
    let primary = state.topo.is_primary();
    let now = DateTime::now();
    let ts = state.clock;
    let mut r = doc! {
        "helloOk": true,
        "isWritablePrimary": primary,
        "ismaster": primary,
        "setName": state.config.set_name.clone(),
        "setVersion": 1,
        "hosts": [host],
        "me": host,
        "electionId": state.topo.election_id(),
        "secondary": !primary,
        "maxBsonObjectSize": 16 * 1024 * 1024,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "localTime": now,
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": conn_id as i32,
        "minWireVersion": 0,
        "maxWireVersion": 21,
        "readOnly": false,
        "lastWrite": {
            "opTime": {"ts": ts, "t": Bson::Int64(1)},
            "lastWriteDate": now,
            "majorityOpTime": {"ts": ts, "t": Bson::Int64(1)},
            "majorityWriteDate": now,
        },
    };
    if primary {
        r.insert("primary", host);
    }
    if state.config.streaming_hello {
        r.insert(
            "topologyVersion",
            doc! {"processId": process_id, "counter": Bson::Int64(state.topo.counter)},
        );
    }
    r
}
