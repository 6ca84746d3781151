//! Reading platforms' outboxes beside the running gateway: one connection per connected
//! client, to the embedded file (read-only, WAL lets it read while the writer writes) or to
//! the shared database (opened again when lost).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::outbox::OutboxRecord;
use super::reads::open_read_only;
use super::StoreError;

/// A read-only connection that reads platforms' outboxes (one per connected client).
pub struct OutboxReader(ReaderConnection);

enum ReaderConnection {
    File(Connection),
    /// Always Some but while dropped; opened again from the URL when the connection is lost.
    Database(Box<(Option<postgres::Client>, super::DatabaseUrl)>),
}

impl Drop for ReaderConnection {
    /// The database client says goodbye to the server by blocking on a runtime of its own,
    /// which a tokio worker must not do: where it is one, the goodbye is said on a thread.
    fn drop(&mut self) {
        if let ReaderConnection::Database(database) = self {
            if let Some(client) = database.0.take() {
                close_off_runtime(client);
            }
        }
    }
}

impl OutboxReader {
    /// # Errors
    /// [`StoreError::Open`] if the file does not exist or is no database of ours.
    pub fn open(path: &Path) -> Result<OutboxReader, StoreError> {
        open_read_only(path).map(|c| OutboxReader(ReaderConnection::File(c)))
    }

    /// A reader of the store at `location`.
    ///
    /// # Errors
    /// [`StoreError`] if the file cannot be opened or the database reached.
    pub fn at(location: &super::StoreLocation) -> Result<OutboxReader, StoreError> {
        match location {
            super::StoreLocation::File(path) => OutboxReader::open(path),
            super::StoreLocation::Database(url) => Ok(OutboxReader(ReaderConnection::Database(
                Box::new((Some(url.connect()?), url.clone())),
            ))),
        }
    }

    /// Up to `limit` events of `platform`'s outbox after `after`, in order.
    ///
    /// # Errors
    /// [`StoreError`] if the query fails.
    pub fn read(
        &mut self,
        platform: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        let connection = match &mut self.0 {
            ReaderConnection::File(connection) => connection,
            ReaderConnection::Database(database) => {
                let (client, url) = &mut **database;
                return with_database(client, url, |client| {
                    super::postgres::read_outbox(client, platform, after, limit)
                });
            }
        };
        let mut statement = connection.prepare_cached(
            "SELECT platform, sequence, event_id, call_id, created_at, body FROM outbox
             WHERE platform = ?1 AND sequence > ?2 ORDER BY sequence LIMIT ?3",
        )?;
        let rows = statement.query_map(params![platform, after as i64, limit as i64], |row| {
            Ok(OutboxRecord {
                platform: row.get(0)?,
                sequence: row.get::<_, i64>(1)?.max(0) as u64,
                event_id: row.get(2)?,
                call_id: row.get(3)?,
                created_at: row.get(4)?,
                body: row.get::<_, Vec<u8>>(5)?.into(),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// `platform`'s newest committed sequence and its last acknowledgement, as stored.
    ///
    /// # Errors
    /// [`StoreError`] if the query fails.
    pub fn position(&mut self, platform: &str) -> Result<(u64, u64), StoreError> {
        let connection = match &mut self.0 {
            ReaderConnection::File(connection) => connection,
            ReaderConnection::Database(database) => {
                let (client, url) = &mut **database;
                return with_database(client, url, |client| {
                    super::postgres::position(client, platform)
                });
            }
        };
        let latest: Option<i64> = connection
            .query_row(
                "SELECT latest FROM outbox_sequences WHERE platform = ?1",
                [platform],
                |row| row.get(0),
            )
            .optional()?;
        let acked: Option<i64> = connection
            .query_row(
                "SELECT sequence FROM outbox_acks WHERE platform = ?1",
                [platform],
                |row| row.get(0),
            )
            .optional()?;
        let acked = acked.unwrap_or(0).max(0) as u64;
        Ok((latest.unwrap_or(0).max(0) as u64, acked))
    }

    /// The oldest sequence of `platform` still kept (0: none).
    ///
    /// # Errors
    /// [`StoreError`] if the query fails.
    pub fn oldest(&mut self, platform: &str) -> Result<u64, StoreError> {
        let connection = match &mut self.0 {
            ReaderConnection::File(connection) => connection,
            ReaderConnection::Database(database) => {
                let (client, url) = &mut **database;
                return with_database(client, url, |client| {
                    super::postgres::oldest(client, platform)
                });
            }
        };
        let oldest: Option<i64> = connection.query_row(
            "SELECT MIN(sequence) FROM outbox WHERE platform = ?1",
            [platform],
            |row| row.get(0),
        )?;
        Ok(oldest.map_or(0, |s| s.max(0) as u64))
    }
}

/// Drops a database client where that may block: on this thread outside a tokio runtime,
/// else on a thread of its own (a client that cannot be given one is left unclosed: the
/// server notices the connection go when the process ends).
pub(super) fn close_off_runtime(client: postgres::Client) {
    if tokio::runtime::Handle::try_current().is_err() {
        drop(client);
        return;
    }
    let (sender, receiver) = std::sync::mpsc::channel::<postgres::Client>();
    match std::thread::Builder::new()
        .name("store-client-close".into())
        .spawn(move || drop(receiver.recv()))
    {
        Ok(_) => {
            let _ = sender.send(client);
        }
        Err(_) => std::mem::forget(client),
    }
}

/// Runs `query` on a reader's database connection; a connection found lost (the database
/// restarted, a network cut) is opened again and the query tried once more.
fn with_database<T>(
    client: &mut Option<postgres::Client>,
    url: &super::DatabaseUrl,
    query: impl Fn(&mut postgres::Client) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    if let Some(connected) = client.as_mut().filter(|c| !c.is_closed()) {
        match query(connected) {
            Err(_) if connected.is_closed() => {}
            outcome => return outcome,
        }
    }
    *client = None;
    let mut reconnected = url.connect()?;
    let outcome = query(&mut reconnected);
    *client = Some(reconnected);
    outcome
}
