//! Reads beside the running gateway: each opens its own read-only connection (WAL lets it read
//! while the writer writes), for the `calls` command, the work-order API and the tests.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{BlockedNumberRecord, CallRecord, ConferencePartyRecord, LinkageRecord, StoreError};

/// A read-only connection for readers beside the running gateway (WAL lets them read while it
/// writes).
pub(super) fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(connection)
}

/// The numbers blocked through the API that have not expired at `now` (Unix ms).
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn list_blocked(path: &Path, now: i64) -> Result<Vec<BlockedNumberRecord>, StoreError> {
    let connection = open_read_only(path)?;
    let mut statement = connection.prepare(
        "SELECT number, platform, reason, blocked_at, expires_at FROM blocked_numbers
         WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY number",
    )?;
    let rows = statement.query_map(params![now], |row| {
        Ok(BlockedNumberRecord {
            number: row.get(0)?,
            platform: row.get(1)?,
            reason: row.get(2)?,
            blocked_at: row.get(3)?,
            expires_at: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

const CALL_COLUMNS: &str = "id, a_call_id, b_call_id, caller, called, a_peer, b_peer, started_at,
    answered_at, ended_at, ended_by, end_reason, final_status, rtp_a_to_b, rtp_b_to_a, rtp_dropped,
    a_interface, b_interface, recording";

fn call_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CallRecord> {
    Ok(CallRecord {
        id: row.get(0)?,
        a_call_id: row.get(1)?,
        b_call_id: row.get(2)?,
        caller: row.get(3)?,
        called: row.get(4)?,
        a_peer: row.get(5)?,
        b_peer: row.get(6)?,
        started_at: row.get(7)?,
        answered_at: row.get(8)?,
        ended_at: row.get(9)?,
        ended_by: row.get(10)?,
        end_reason: row.get(11)?,
        final_status: row.get(12)?,
        rtp_a_to_b: row.get::<_, i64>(13)?.max(0) as u64,
        rtp_b_to_a: row.get::<_, i64>(14)?.max(0) as u64,
        rtp_dropped: row.get::<_, i64>(15)?.max(0) as u64,
        a_interface: row.get(16)?,
        b_interface: row.get(17)?,
        node: String::new(),
        recording: row.get(18)?,
    })
}

/// The newest `limit` calls, newest first, through a read-only connection.
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn list_calls(path: &Path, limit: usize) -> Result<Vec<CallRecord>, StoreError> {
    let connection = open_read_only(path)?;
    let mut statement = connection.prepare(&format!(
        "SELECT {CALL_COLUMNS} FROM calls ORDER BY started_at DESC, rowid DESC LIMIT ?1"
    ))?;
    let rows = statement.query_map([limit as i64], call_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The calls started at or after `since` (Unix ms), oldest first, at most `limit`.
pub(super) fn calls_since(
    connection: &Connection,
    since: i64,
    limit: usize,
) -> Result<Vec<CallRecord>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {CALL_COLUMNS} FROM calls WHERE started_at >= ?1 ORDER BY started_at, rowid LIMIT ?2"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(rusqlite::params![since, limit], call_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The calls not ended (the `calls_open` index), oldest first.
pub(super) fn open_calls(connection: &Connection) -> Result<Vec<CallRecord>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {CALL_COLUMNS} FROM calls WHERE ended_at IS NULL ORDER BY started_at, rowid"
    ))?;
    let rows = statement.query_map([], call_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The transfer attempts of one call (its gateway id), oldest first.
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn list_linkages(path: &Path, call_id: &str) -> Result<Vec<LinkageRecord>, StoreError> {
    linkages_of(&open_read_only(path)?, call_id)
}

pub(super) fn linkages_of(
    connection: &Connection,
    call_id: &str,
) -> Result<Vec<LinkageRecord>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT id, call_id, from_platform, from_peer, to_platform, to_peer, target, trigger,
                requested_at, ringing_at, answered_at, ended_at, outcome, sip_status, kind,
                incident_number, disposition, replied_at
         FROM linkages WHERE call_id = ?1 ORDER BY requested_at, rowid",
    )?;
    let rows = statement.query_map([call_id], |row| {
        Ok(LinkageRecord {
            id: row.get(0)?,
            call_id: row.get(1)?,
            from_platform: row.get(2)?,
            from_peer: row.get(3)?,
            to_platform: row.get(4)?,
            to_peer: row.get(5)?,
            target: row.get(6)?,
            trigger: row.get(7)?,
            requested_at: row.get(8)?,
            ringing_at: row.get(9)?,
            answered_at: row.get(10)?,
            ended_at: row.get(11)?,
            outcome: row.get(12)?,
            sip_status: row.get(13)?,
            kind: row.get(14)?,
            incident_number: row.get(15)?,
            disposition: row.get(16)?,
            replied_at: row.get(17)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// One linkage by its id.
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn find_linkage(path: &Path, linkage_id: &str) -> Result<Option<LinkageRecord>, StoreError> {
    let connection = open_read_only(path)?;
    let call_id: Option<String> = connection
        .query_row(
            "SELECT call_id FROM linkages WHERE id = ?1",
            [linkage_id],
            |row| row.get(0),
        )
        .optional()?;
    let Some(call_id) = call_id else {
        return Ok(None);
    };
    Ok(linkages_of(&connection, &call_id)?
        .into_iter()
        .find(|l| l.id == linkage_id))
}

/// The conference parties of one call (its gateway id): each stint of each party (a call may
/// hold more than one conference), in order of joining.
///
/// # Errors
/// [`StoreError::Open`] if the file does not exist or is no database of ours.
pub fn list_conference_parties(
    path: &Path,
    call_id: &str,
) -> Result<Vec<ConferencePartyRecord>, StoreError> {
    parties_of(&open_read_only(path)?, call_id)
}

pub(super) fn parties_of(
    connection: &Connection,
    call_id: &str,
) -> Result<Vec<ConferencePartyRecord>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT call_id, party, peer, number, joined_at, left_at
         FROM conference_parties WHERE call_id = ?1 ORDER BY joined_at, party",
    )?;
    let rows = statement.query_map([call_id], |row| {
        Ok(ConferencePartyRecord {
            call_id: row.get(0)?,
            party: row.get(1)?,
            peer: row.get(2)?,
            number: row.get(3)?,
            joined_at: row.get(4)?,
            left_at: row.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
