//! Where the store is, and the reads that work the same on either engine (each its own
//! connection, for the `calls` command and the work-order API).

use std::path::PathBuf;

use super::{
    find_linkage, list_blocked, list_calls, postgres, reads, BlockedNumberRecord, CallDetail,
    CallRecord, DatabaseUrl, LinkageRecord, StoreError,
};

/// Where the store is: an embedded SQLite file, or a PostgreSQL database shared by a cluster.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    File(PathBuf),
    Database(DatabaseUrl),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::File(path) => write!(f, "{}", path.display()),
            StoreLocation::Database(url) => write!(f, "{url}"),
        }
    }
}

impl StoreLocation {
    /// The newest `limit` calls (of every node), newest first.
    ///
    /// # Errors
    /// [`StoreError`] if the store cannot be read.
    pub fn list_calls(&self, limit: usize) -> Result<Vec<CallRecord>, StoreError> {
        match self {
            StoreLocation::File(path) => list_calls(path, limit),
            StoreLocation::Database(url) => postgres::list_calls(&mut url.connect()?, limit),
        }
    }

    /// The call detail records of the calls started at or after `since` (Unix ms), oldest
    /// first, at most `limit`: each call with its linkages (transfers and conference guests)
    /// and its conference parties.
    ///
    /// # Errors
    /// [`StoreError`] if the store cannot be read.
    pub fn call_details_since(
        &self,
        since: i64,
        limit: usize,
    ) -> Result<Vec<CallDetail>, StoreError> {
        match self {
            StoreLocation::File(path) => {
                let connection = reads::open_read_only(path)?;
                reads::calls_since(&connection, since, limit)?
                    .into_iter()
                    .map(|call| {
                        let linkages = reads::linkages_of(&connection, &call.id)?;
                        let conference_parties = reads::parties_of(&connection, &call.id)?;
                        Ok(CallDetail {
                            call,
                            linkages,
                            conference_parties,
                        })
                    })
                    .collect()
            }
            StoreLocation::Database(url) => {
                let mut client = url.connect()?;
                postgres::calls_since(&mut client, since, limit)?
                    .into_iter()
                    .map(|call| {
                        let linkages = postgres::linkages_of(&mut client, &call.id)?;
                        let conference_parties = postgres::parties_of(&mut client, &call.id)?;
                        Ok(CallDetail {
                            call,
                            linkages,
                            conference_parties,
                        })
                    })
                    .collect()
            }
        }
    }

    /// The calls not ended, of every node sharing the store, oldest first.
    ///
    /// # Errors
    /// [`StoreError`] if the store cannot be read.
    pub fn active_calls(&self) -> Result<Vec<CallRecord>, StoreError> {
        match self {
            StoreLocation::File(path) => reads::open_calls(&reads::open_read_only(path)?),
            StoreLocation::Database(url) => postgres::active_calls(&mut url.connect()?),
        }
    }

    /// One linkage by its id.
    ///
    /// # Errors
    /// [`StoreError`] if the store cannot be read.
    pub fn find_linkage(&self, linkage_id: &str) -> Result<Option<LinkageRecord>, StoreError> {
        match self {
            StoreLocation::File(path) => find_linkage(path, linkage_id),
            StoreLocation::Database(url) => postgres::find_linkage(&mut url.connect()?, linkage_id),
        }
    }

    /// The numbers blocked through the API that have not expired at `now` (Unix ms).
    ///
    /// # Errors
    /// [`StoreError`] if the store cannot be read.
    pub fn list_blocked(&self, now: i64) -> Result<Vec<BlockedNumberRecord>, StoreError> {
        match self {
            StoreLocation::File(path) => list_blocked(path, now),
            StoreLocation::Database(url) => postgres::list_blocked(&mut url.connect()?, now),
        }
    }
}
