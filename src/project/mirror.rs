//! The mirror upsert: documents made storable, deduplicated per key, upserted version-guarded.

use super::*;

/// Literal markers of what [`sanitize`] changes, looked for in a document's JSON text before
/// parsing it (almost no document has one).
const UNSTORABLE_MARKERS: [&str; 6] = [
    "\\u0000",
    "\"$numberDouble\"",
    "\"$numberDecimal\":\"NaN",
    "\"$numberDecimal\":\"Inf",
    "\"$numberDecimal\":\"-",
    "\"$date\":{",
];

/// Per document of the batch, its storable body when [`sanitize`] had to change it (`None`:
/// store it as it is). Each change is counted and logged once, never with the value.
/// A document's JSON text as the mirror stores it, with what was changed, when that differs
/// from the text (almost never: see [`sanitize`]).
pub fn storable_form(raw: &str) -> Option<(serde_json::Value, Vec<Adjustment>)> {
    if !UNSTORABLE_MARKERS.iter().any(|m| raw.contains(m)) {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_str(raw).ok()?;
    let changes = sanitize::sanitize(&mut v);
    (!changes.is_empty()).then_some((v, changes))
}

pub(super) fn storable(batch: &[&SourceDoc], stats: &mut ApplyStats) -> Vec<Option<DocJson>> {
    batch
        .iter()
        .map(|d| {
            let (v, changes) = storable_form(d.doc.as_deref()?.get())?;
            let mut seen = BTreeSet::new();
            for a in &changes {
                if seen.insert((a.field.as_str(), a.kind)) {
                    *stats
                        .adjusted
                        .entry(("cdc.source_doc".into(), a.field.clone(), a.kind.into()))
                        .or_default() += 1;
                    tracing::warn!(entity = d.entity.as_str(), key = %d.key, field = %a.field,
                        adjustment = a.kind, original_length = a.original_length,
                        "a value the mirror cannot store was adjusted");
                }
            }
            Some(doc_json(&v))
        })
        .collect()
}

/// Keep the highest version per (entity, key); drop updates that carry no document.
/// Returns the kept documents and how many were dropped.
pub(super) fn dedupe(docs: &[SourceDoc]) -> Result<(Vec<&SourceDoc>, u64), ProjectError> {
    let mut latest: BTreeMap<(Entity, &str), &SourceDoc> = BTreeMap::new();
    let mut dropped = 0u64;
    for d in docs {
        if d.key.is_empty() {
            return Err(ProjectError::InvalidDoc {
                entity: d.entity.as_str(),
                key: String::new(),
                reason: "empty _id",
            });
        }
        if !d.deleted && d.doc.is_none() {
            dropped += 1;
            continue;
        }
        match latest.entry((d.entity, d.key.as_str())) {
            btree_map::Entry::Vacant(v) => {
                v.insert(d);
            }
            btree_map::Entry::Occupied(mut o) => {
                dropped += 1;
                if d.version > o.get().version {
                    o.insert(d);
                }
            }
        }
    }
    Ok((latest.into_values().collect(), dropped))
}

/// One UNNEST upsert of the whole batch; returns how many documents changed the mirror.
pub(super) async fn upsert_mirror(
    tx: &Transaction<'_>,
    batch: &[&SourceDoc],
    storable: &[Option<DocJson>],
    versions: Versions,
) -> Result<BTreeSet<(Entity, String)>, ProjectError> {
    let entity: Vec<&str> = batch.iter().map(|d| d.entity.as_str()).collect();
    let key: Vec<&str> = batch.iter().map(|d| d.key.as_str()).collect();
    let ct_t: Vec<i64> = batch
        .iter()
        .map(|d| i64::from(d.version.cluster_time.t))
        .collect();
    let ct_i: Vec<i64> = batch
        .iter()
        .map(|d| i64::from(d.version.cluster_time.i))
        .collect();
    let ordinal: Vec<i64> = batch.iter().map(|d| i64::from(d.version.ordinal)).collect();
    let wall: Vec<DateTime<Utc>> = batch.iter().map(|d| d.wall_time).collect();
    let doc: Vec<Option<Json<&RawValue>>> = batch
        .iter()
        .zip(storable)
        .map(|(d, fixed)| fixed.as_deref().or(d.doc.as_deref()).map(Json))
        .collect();
    let deleted: Vec<bool> = batch.iter().map(|d| d.deleted).collect();
    let or_equal = versions == Versions::NewerOrEqual;
    let params: [(&(dyn ToSql + Sync), Type); 9] = [
        (&entity, Type::TEXT_ARRAY),
        (&key, Type::TEXT_ARRAY),
        (&ct_t, Type::INT8_ARRAY),
        (&ct_i, Type::INT8_ARRAY),
        (&ordinal, Type::INT8_ARRAY),
        (&wall, Type::TIMESTAMPTZ_ARRAY),
        (&doc, Type::JSONB_ARRAY),
        (&deleted, Type::BOOL_ARRAY),
        (&or_equal, Type::BOOL),
    ];
    let rows = tx
        .query_typed(&plan::MIRROR_UPSERT.sql, &params)
        .await
        .map_err(ProjectError::pg("mirror"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let entity: Entity = r.get::<_, &str>(0).parse().ok()?;
            Some((entity, r.get::<_, String>(1)))
        })
        .collect())
}
