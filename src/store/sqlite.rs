//! The SQLite engine: the embedded store's writes, in one transaction per batch.

use std::collections::HashMap;

use rusqlite::{params, Connection, ErrorCode};

use super::outbox::insert_events;
use super::writer::{Change, Engine, EngineError, WriteOp};
use super::{CallRecord, LinkageRecord};

/// The writer's connection to the file.
pub(super) struct SqliteEngine(pub(super) Connection);

impl Engine for SqliteEngine {
    fn write_batch(
        &mut self,
        batch: &[WriteOp],
        sequences: &mut HashMap<String, u64>,
    ) -> Result<Vec<u64>, EngineError> {
        write_batch(&mut self.0, batch, sequences).map_err(|error| EngineError {
            retry: worth_retrying(&error),
            cause: likely_cause(&error),
            message: error.to_string(),
        })
    }
}

/// What an operator should look at first, from SQLite's error code.
fn likely_cause(error: &rusqlite::Error) -> &'static str {
    match error.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => "the disk (or store.max_size_mb) is full",
        Some(ErrorCode::ReadOnly) => "the file or its volume is read-only",
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "another program holds a lock on the database (a backup, a sqlite3 shell)"
        }
        Some(ErrorCode::SystemIoFailure) => "the disk reports I/O errors",
        Some(ErrorCode::CannotOpen) => "the file or its directory is gone or not accessible",
        Some(ErrorCode::OutOfMemory) => "the process is out of memory",
        _ => "see the error",
    }
}

/// Errors that another attempt may not meet: no space, no write permission, I/O, a lock.
fn worth_retrying(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::DiskFull
                | ErrorCode::ReadOnly
                | ErrorCode::SystemIoFailure
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
        )
    )
}

/// Writes `batch` in one transaction; returns the sequences its events got, in order.
fn write_batch(
    connection: &mut Connection,
    batch: &[WriteOp],
    sequences: &mut HashMap<String, u64>,
) -> Result<Vec<u64>, rusqlite::Error> {
    let transaction = connection.transaction()?;
    let mut numbers = Vec::new();
    for op in batch {
        match op {
            WriteOp::Write {
                changes, events, ..
            } => {
                for change in changes {
                    write_change(&transaction, change)?;
                }
                numbers.extend(insert_events(&transaction, sequences, events)?);
            }
            WriteOp::Ack { platform, sequence } => {
                transaction
                    .prepare_cached(
                        "INSERT INTO outbox_acks (platform, sequence) VALUES (?1, ?2)
                         ON CONFLICT(platform) DO UPDATE SET
                             sequence = MAX(sequence, excluded.sequence)",
                    )?
                    .execute(params![platform, *sequence as i64])?;
            }
            WriteOp::Prune(before) => {
                // A call still open keeps its events: a restart after a crash finds there
                // which platforms saw it.
                transaction
                    .prepare_cached(
                        "DELETE FROM outbox WHERE created_at < ?1 AND call_id NOT IN
                             (SELECT id FROM calls WHERE ended_at IS NULL AND id IS NOT NULL)",
                    )?
                    .execute(params![before])?;
            }
            WriteOp::Flush(_) | WriteOp::Ping(_) => {}
        }
    }
    transaction.commit()?;
    Ok(numbers)
}

fn write_change(transaction: &rusqlite::Transaction<'_>, change: &Change) -> rusqlite::Result<()> {
    match change {
        Change::Started(r) | Change::Ended(r) => write_call(transaction, r)?,
        Change::Answered {
            id,
            b_call_id,
            b_peer,
            b_interface,
            answered_at,
        } => {
            transaction
                .prepare_cached(
                    "UPDATE calls SET b_call_id = ?2, b_peer = ?3, answered_at = ?4,
                         b_interface = ?5 WHERE id = ?1",
                )?
                .execute(params![id, b_call_id, b_peer, answered_at, b_interface])?;
        }
        Change::Linkage(l) => write_linkage(transaction, l)?,
        Change::LinkageReply {
            linkage_id,
            incident_number,
            disposition,
            replied_at,
        } => {
            transaction
                .prepare_cached(
                    "UPDATE linkages SET
                         incident_number = COALESCE(NULLIF(?2, ''), incident_number),
                         disposition = COALESCE(NULLIF(?3, ''), disposition),
                         replied_at = ?4
                     WHERE id = ?1",
                )?
                .execute(params![
                    linkage_id,
                    incident_number,
                    disposition,
                    replied_at
                ])?;
        }
        Change::ConferenceParty(p) => {
            transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO conference_parties (call_id, party, peer, number,
                         joined_at, left_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    p.call_id,
                    p.party,
                    p.peer,
                    p.number,
                    p.joined_at,
                    p.left_at
                ])?;
        }
        Change::Block(b) => {
            transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO blocked_numbers (number, platform, reason, blocked_at,
                         expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    b.number,
                    b.platform,
                    b.reason,
                    b.blocked_at,
                    b.expires_at
                ])?;
        }
        Change::Unblock(number) => {
            transaction
                .prepare_cached("DELETE FROM blocked_numbers WHERE number = ?1")?
                .execute(params![number])?;
        }
    }
    Ok(())
}

/// A call's record, inserted or brought up to date.
fn write_call(transaction: &rusqlite::Transaction<'_>, r: &CallRecord) -> rusqlite::Result<()> {
    transaction
        .prepare_cached(
            "INSERT INTO calls (id, a_call_id, b_call_id, caller, called, a_peer, b_peer,
                 started_at, answered_at, ended_at, ended_by, end_reason, final_status,
                 rtp_a_to_b, rtp_b_to_a, rtp_dropped, a_interface, b_interface, recording)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                 ?17, ?18, ?19)
             ON CONFLICT(id) DO UPDATE SET b_call_id = excluded.b_call_id,
                 b_peer = excluded.b_peer, b_interface = excluded.b_interface,
                 answered_at = excluded.answered_at,
                 ended_at = excluded.ended_at, ended_by = excluded.ended_by,
                 end_reason = excluded.end_reason, final_status = excluded.final_status,
                 rtp_a_to_b = excluded.rtp_a_to_b, rtp_b_to_a = excluded.rtp_b_to_a,
                 rtp_dropped = excluded.rtp_dropped, recording = excluded.recording",
        )?
        .execute(params![
            r.id,
            r.a_call_id,
            r.b_call_id,
            r.caller,
            r.called,
            r.a_peer,
            r.b_peer,
            r.started_at,
            r.answered_at,
            r.ended_at,
            r.ended_by,
            r.end_reason,
            r.final_status,
            r.rtp_a_to_b as i64,
            r.rtp_b_to_a as i64,
            r.rtp_dropped as i64,
            r.a_interface,
            r.b_interface,
            r.recording,
        ])?;
    Ok(())
}

/// A linkage's record, inserted or brought up to date.
fn write_linkage(
    transaction: &rusqlite::Transaction<'_>,
    l: &LinkageRecord,
) -> rusqlite::Result<()> {
    // A reply may have come while the linkage was under way: its columns stay.
    transaction
        .prepare_cached(
            "INSERT INTO linkages (id, call_id, from_platform, from_peer, to_platform,
                 to_peer, target, trigger, requested_at, ringing_at, answered_at, ended_at,
                 outcome, sip_status, kind)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
             ON CONFLICT(id) DO UPDATE SET call_id = excluded.call_id,
                 from_platform = excluded.from_platform, from_peer = excluded.from_peer,
                 to_platform = excluded.to_platform, to_peer = excluded.to_peer,
                 target = excluded.target, trigger = excluded.trigger,
                 requested_at = excluded.requested_at, ringing_at = excluded.ringing_at,
                 answered_at = excluded.answered_at, ended_at = excluded.ended_at,
                 outcome = excluded.outcome, sip_status = excluded.sip_status,
                 kind = excluded.kind",
        )?
        .execute(params![
            l.id,
            l.call_id,
            l.from_platform,
            l.from_peer,
            l.to_platform,
            l.to_peer,
            l.target,
            l.trigger,
            l.requested_at,
            l.ringing_at,
            l.answered_at,
            l.ended_at,
            l.outcome,
            l.sip_status,
            l.kind,
        ])?;
    Ok(())
}
