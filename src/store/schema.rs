//! The store's schema and its migrations: each version a transaction, applied in order from
//! the version a file has; a file from a newer gateway is refused.

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;

/// The newest schema this code knows.
pub(super) const SCHEMA_VERSION: i64 = 8;

/// The migrations, version `i + 1` at index `i`: each runs in one transaction that also
/// records its version.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 1
    "CREATE TABLE calls (
         id TEXT PRIMARY KEY,
         a_call_id TEXT NOT NULL,
         b_call_id TEXT,
         caller TEXT NOT NULL,
         called TEXT NOT NULL,
         a_peer TEXT NOT NULL,
         b_peer TEXT,
         started_at INTEGER NOT NULL,
         answered_at INTEGER,
         ended_at INTEGER,
         ended_by TEXT,
         end_reason TEXT,
         final_status INTEGER,
         rtp_a_to_b INTEGER NOT NULL DEFAULT 0,
         rtp_b_to_a INTEGER NOT NULL DEFAULT 0,
         rtp_dropped INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX calls_started_at ON calls (started_at);
     CREATE INDEX calls_a_call_id ON calls (a_call_id);",
    // 2
    "CREATE TABLE linkages (
         id TEXT PRIMARY KEY,
         call_id TEXT NOT NULL,
         from_platform TEXT,
         from_peer TEXT NOT NULL,
         to_platform TEXT,
         to_peer TEXT,
         target TEXT NOT NULL,
         trigger TEXT NOT NULL,
         requested_at INTEGER NOT NULL,
         ringing_at INTEGER,
         answered_at INTEGER,
         ended_at INTEGER,
         outcome TEXT,
         sip_status INTEGER
     );
     CREATE INDEX linkages_call_id ON linkages (call_id);",
    // 3
    "ALTER TABLE linkages ADD COLUMN kind TEXT NOT NULL DEFAULT 'transfer';
     CREATE TABLE conference_parties (
         call_id TEXT NOT NULL,
         party INTEGER NOT NULL,
         peer TEXT NOT NULL,
         number TEXT NOT NULL,
         joined_at INTEGER NOT NULL,
         left_at INTEGER,
         PRIMARY KEY (call_id, party, joined_at)
     );",
    // 4
    "CREATE TABLE outbox (
         platform TEXT NOT NULL,
         sequence INTEGER NOT NULL,
         event_id TEXT NOT NULL,
         call_id TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         body BLOB NOT NULL,
         PRIMARY KEY (platform, sequence)
     );
     CREATE INDEX outbox_created_at ON outbox (created_at);
     CREATE TABLE outbox_acks (
         platform TEXT PRIMARY KEY,
         sequence INTEGER NOT NULL
     );",
    // 5
    "CREATE TABLE blocked_numbers (
         number TEXT PRIMARY KEY,
         platform TEXT NOT NULL,
         reason TEXT NOT NULL,
         blocked_at INTEGER NOT NULL,
         expires_at INTEGER
     );",
    // 6
    // The work-order contract's first breaking revision (times as Timestamps, typed
    // tickets): events stored in the old encoding cannot be read back, so they go; each
    // platform's sequence goes on from where it was. Of the calls still open (a killed
    // run), one empty marker per platform that saw them stays, so the next start still
    // ends them on the link (and then deletes the markers). The sequences get a table of
    // their own, so retention may take every old event. The reply on a linkage lands in
    // its record; a killed run's open calls are found, with the events each platform saw,
    // by the two new indexes.
    "CREATE TABLE outbox_sequences (
         platform TEXT PRIMARY KEY,
         latest INTEGER NOT NULL
     );
     INSERT INTO outbox_sequences (platform, latest)
         SELECT platform, MAX(sequence) FROM outbox GROUP BY platform;
     INSERT INTO outbox_sequences (platform, latest)
         SELECT platform, sequence FROM outbox_acks WHERE true
         ON CONFLICT(platform) DO UPDATE SET latest = MAX(latest, excluded.latest);
     DELETE FROM outbox WHERE call_id NOT IN
         (SELECT id FROM calls WHERE ended_at IS NULL AND id IS NOT NULL)
         OR sequence < (SELECT MAX(newest.sequence) FROM outbox newest
             WHERE newest.platform = outbox.platform AND newest.call_id = outbox.call_id);
     UPDATE outbox SET body = x'';
     CREATE INDEX outbox_call_id ON outbox (call_id);
     CREATE INDEX calls_open ON calls (id) WHERE ended_at IS NULL;
     ALTER TABLE linkages ADD COLUMN incident_number TEXT;
     ALTER TABLE linkages ADD COLUMN disposition TEXT;
     ALTER TABLE linkages ADD COLUMN replied_at INTEGER;",
    // 7: the network interface of each leg (`[[interface]]`); earlier calls had only one.
    "ALTER TABLE calls ADD COLUMN a_interface TEXT NOT NULL DEFAULT 'default';
     ALTER TABLE calls ADD COLUMN b_interface TEXT;
     UPDATE calls SET b_interface = 'default' WHERE b_peer IS NOT NULL;",
    // 8: the call's recording (`[recording]`).
    "ALTER TABLE calls ADD COLUMN recording TEXT;",
];

pub(super) fn migrate(connection: &Connection) -> Result<(), StoreError> {
    connection
        .execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: Option<i64> = connection
        .query_row("SELECT MAX(version) FROM schema_version", [], |row| {
            row.get(0)
        })
        .optional()?
        .flatten();
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if found < version {
            connection.execute_batch(&format!(
                "BEGIN;\n{sql}\nINSERT INTO schema_version (version) VALUES ({version});\nCOMMIT;"
            ))?;
        }
    }
    Ok(())
}
