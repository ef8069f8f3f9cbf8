//! The capture checkpoint's one store: it never moves backward, whoever writes it.

use bowmark_cdc::checkpoint::{Checkpoint, CheckpointStore};
use bowmark_cdc::event::ClusterTime;
use serde_json::json;

use crate::support;

fn at(t: u32, token: &str) -> Checkpoint {
    Checkpoint {
        resume_token: json!({ "_data": token }),
        cluster_time: Some(ClusterTime { t, i: 1 }),
        event_id: Some(format!("paving:{t}.1.0")),
    }
}

#[tokio::test]
async fn the_checkpoint_never_moves_backward() {
    let db = support::migrated_db().await;
    let client = db.client().await;
    let store = CheckpointStore::new(&client);
    // Given a checkpoint at cluster time 20
    store.save("paving", &at(20, "t20")).await.unwrap();
    // When an older position is saved (a late writer), it is ignored
    store.save("paving", &at(10, "t10")).await.unwrap();
    let now = store.load("paving").await.unwrap().expect("a checkpoint");
    assert_eq!(now.resume_token, json!({ "_data": "t20" }));
    // And a backfill's handoff of an older pre-scan position keeps the newer one
    let kept = store
        .hand_off(
            "paving",
            &json!({ "_data": "t15" }),
            ClusterTime { t: 15, i: 0 },
        )
        .await
        .unwrap();
    assert_eq!(kept, Some(ClusterTime { t: 20, i: 1 }));
    // While newer positions move it forward, from either writer
    store.save("paving", &at(30, "t30")).await.unwrap();
    let stored = store
        .hand_off(
            "paving",
            &json!({ "_data": "t40" }),
            ClusterTime { t: 40, i: 0 },
        )
        .await
        .unwrap();
    assert_eq!(stored, None);
    let now = store.load("paving").await.unwrap().expect("a checkpoint");
    assert_eq!(now.resume_token, json!({ "_data": "t40" }));
    assert_eq!(now.cluster_time, Some(ClusterTime { t: 40, i: 0 }));
}
