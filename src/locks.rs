//! Every PostgreSQL advisory lock the pipeline takes, in one place, with the order they are
//! taken in. The 64-bit keys start with the bytes of "bowmark"; the capture's key is a hash of
//! its pipeline's name; the backfill's is a (class, `hashtext(pipeline)`) pair.
//!
//! Lock order: a session that holds one of these only ever waits for one further down the
//! list, never for one above it, so they cannot deadlock with each other.
//!
//! 1. [`MIGRATE`] (session): `migrate`, on a connection of its own, alone.
//! 2. [`BACKFILL_CLASS`] with `hashtext(pipeline)` (session, try-lock): one backfill per
//!    pipeline and database.
//! 3. [`capture`] (session, try-lock): the one capture that tails a pipeline (leader election);
//!    held on the lease connection, which takes no other lock. It is a lease: that session
//!    ends after `LEASE_TTL` without a query (`idle_session_timeout`), releasing the lock, and
//!    the holder stops before then ([`crate::capture::leader`]).
//! 4. [`PROJECT`] (transaction; shared by backfill chunks, exclusive by the streaming projector
//!    and `reproject`; session-level exclusive by a backfill loading reports side by side):
//!    serializes projections on one database.
//! 5. [`REBUILD`] (transaction): rebuilding deferred indexes and foreign keys after a bulk
//!    load, taken after [`PROJECT`] shared.

/// `migrate` runs (the bytes of "bowmark" followed by 0x01).
pub(crate) const MIGRATE: i64 = 0x626f_776d_6172_6b01;

/// Projections (0x02).
pub(crate) const PROJECT: i64 = 0x626f_776d_6172_6b02;

/// Rebuilds of deferred indexes and foreign keys (0x04).
pub(crate) const REBUILD: i64 = 0x626f_776d_6172_6b04;

/// Class id of the backfill's per-pipeline lock (the second key is `hashtext(pipeline)`).
pub(crate) const BACKFILL_CLASS: i32 = 0x00cd_cbf1;

/// The key of a pipeline's capture lock: FNV-1a 64 of `bowmark-cdc:capture:<name>` (stable
/// across builds and platforms, unlike the std hasher).
pub fn capture(pipeline: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "bowmark-cdc:capture:".bytes().chain(pipeline.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_stable() {
        let keys = [
            MIGRATE,
            PROJECT,
            REBUILD,
            capture("paving"),
            capture("concrete"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // The capture key must not change between releases: a running replica of the old
        // version would not see a new one's lock.
        assert_eq!(capture("paving"), capture("paving"));
        assert_eq!(PROJECT, 7093019249801849602);
    }
}
