//! The numbers the platforms blocked through the work-order API, shared by the work-order
//! service (which adds and removes them) and screening (which refuses their calls). Exact numbers,
//! each until a time or for good; the store keeps them across restarts.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::store::BlockedNumberRecord;

/// Numbers the platforms blocked through the work-order API (beside the config's patterns):
/// exact numbers, each until a time or for good. The store keeps them across restarts.
#[derive(Debug, Default)]
pub struct Blocklist {
    entries: Mutex<HashMap<String, BlockedNumberRecord>>,
}

/// Most numbers the API may block (a bound on memory; the config's patterns are unbounded).
pub const MAX_BLOCKED: usize = 100_000;

impl Blocklist {
    /// With the entries the store holds.
    pub fn with(records: Vec<BlockedNumberRecord>) -> Blocklist {
        Blocklist {
            entries: Mutex::new(records.into_iter().map(|r| (r.number.clone(), r)).collect()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BlockedNumberRecord>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `number` is blocked at `now_ms` (Unix ms); an expired entry goes.
    pub fn is_blocked(&self, number: &str, now_ms: i64) -> bool {
        let mut entries = self.lock();
        match entries.get(number).map(|r| r.expires_at) {
            None => false,
            Some(Some(expires)) if expires <= now_ms => {
                entries.remove(number);
                false
            }
            Some(_) => true,
        }
    }

    /// Adds (or renews) an entry; false if the list is full.
    pub fn block(&self, record: BlockedNumberRecord) -> bool {
        let mut entries = self.lock();
        if entries.len() >= MAX_BLOCKED && !entries.contains_key(&record.number) {
            let now = record.blocked_at;
            entries.retain(|_, r| r.expires_at.is_none_or(|e| e > now));
            if entries.len() >= MAX_BLOCKED {
                return false;
            }
        }
        entries.insert(record.number.clone(), record);
        true
    }

    /// Whether `number` may be added at `now_ms` (Unix ms): it is listed already, or the list
    /// has room once the expired entries go.
    pub fn has_room(&self, number: &str, now_ms: i64) -> bool {
        let mut entries = self.lock();
        if entries.len() < MAX_BLOCKED || entries.contains_key(number) {
            return true;
        }
        entries.retain(|_, r| r.expires_at.is_none_or(|e| e > now_ms));
        entries.len() < MAX_BLOCKED
    }

    /// Takes the store's whole list in place of this one (a cluster's node that may have
    /// missed other nodes' changes while it could not hear them).
    pub fn replace(&self, records: Vec<BlockedNumberRecord>) {
        *self.lock() = records.into_iter().map(|r| (r.number.clone(), r)).collect();
    }

    /// Removes an entry; false if there was none.
    pub fn unblock(&self, number: &str) -> bool {
        self.lock().remove(number).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(number: &str, expires_at: Option<i64>) -> BlockedNumberRecord {
        BlockedNumberRecord {
            number: number.into(),
            platform: "12345".into(),
            reason: "harassment".into(),
            blocked_at: 1_000,
            expires_at,
        }
    }

    #[test]
    fn the_apis_entries_block_until_they_expire_or_are_taken_off() {
        let list = Blocklist::with(vec![listed("13700000001", None)]);
        assert!(list.block(listed("13700000002", Some(61_000))));
        assert!(list.is_blocked("13700000001", 5_000));
        assert!(list.is_blocked("13700000002", 60_999));
        assert!(!list.is_blocked("13700000002", 61_000), "expired");
        assert!(!list.is_blocked("13700000002", 1_000), "and gone");
        assert!(list.unblock("13700000001"));
        assert!(!list.unblock("13700000001"));
        assert!(!list.is_blocked("13700000001", 5_000));
    }
}
