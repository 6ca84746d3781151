//! Reads of the shared store beside the writer, and closing what a node left open.

use std::collections::{BTreeMap, HashMap};

use postgres::{GenericClient, Row};

use super::super::outbox::{Interrupted, NewEvent, OutboxRecord, Recovery};
use super::super::{
    BlockedNumberRecord, CallRecord, ConferencePartyRecord, LinkageRecord, StoreError,
};
use super::OUTBOX_CHANNEL;

const CALL_COLUMNS: &str = "id, a_call_id, b_call_id, caller, called, a_peer, b_peer, started_at,
    answered_at, ended_at, ended_by, end_reason, final_status, rtp_a_to_b, rtp_b_to_a, rtp_dropped,
    a_interface, b_interface, node, recording";

fn call_row(row: &Row) -> CallRecord {
    CallRecord {
        id: row.get(0),
        a_call_id: row.get(1),
        b_call_id: row.get(2),
        caller: row.get(3),
        called: row.get(4),
        a_peer: row.get(5),
        b_peer: row.get(6),
        started_at: row.get(7),
        answered_at: row.get(8),
        ended_at: row.get(9),
        ended_by: row.get(10),
        end_reason: row.get(11),
        final_status: row
            .get::<_, Option<i32>>(12)
            .and_then(|s| u16::try_from(s).ok()),
        rtp_a_to_b: row.get::<_, i64>(13).max(0) as u64,
        rtp_b_to_a: row.get::<_, i64>(14).max(0) as u64,
        rtp_dropped: row.get::<_, i64>(15).max(0) as u64,
        a_interface: row.get(16),
        b_interface: row.get(17),
        node: row.get(18),
        recording: row.get(19),
    }
}

/// The newest `limit` calls of every node, newest first.
pub(in crate::store) fn list_calls(
    client: &mut impl GenericClient,
    limit: usize,
) -> Result<Vec<CallRecord>, StoreError> {
    let rows = client.query(
        &format!("SELECT {CALL_COLUMNS} FROM calls ORDER BY started_at DESC, id DESC LIMIT $1"),
        &[&(limit as i64)],
    )?;
    Ok(rows.iter().map(call_row).collect())
}

/// The calls of every node started at or after `since` (Unix ms), oldest first, at most
/// `limit`.
pub(in crate::store) fn calls_since(
    client: &mut impl GenericClient,
    since: i64,
    limit: usize,
) -> Result<Vec<CallRecord>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client.query(
        &format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE started_at >= $1 ORDER BY started_at, id LIMIT $2"
        ),
        &[&since, &limit],
    )?;
    Ok(rows.iter().map(call_row).collect())
}

/// The calls of every node not ended, oldest first.
pub(in crate::store) fn active_calls(
    client: &mut impl GenericClient,
) -> Result<Vec<CallRecord>, StoreError> {
    let rows = client.query(
        &format!("SELECT {CALL_COLUMNS} FROM calls WHERE ended_at IS NULL ORDER BY started_at, id"),
        &[],
    )?;
    Ok(rows.iter().map(call_row).collect())
}

pub(in crate::store) fn linkages_of(
    client: &mut impl GenericClient,
    call_id: &str,
) -> Result<Vec<LinkageRecord>, StoreError> {
    let rows = client.query(
        "SELECT id, call_id, from_platform, from_peer, to_platform, to_peer, target, trigger,
                requested_at, ringing_at, answered_at, ended_at, outcome, sip_status, kind,
                incident_number, disposition, replied_at
         FROM linkages WHERE call_id = $1 ORDER BY requested_at, id",
        &[&call_id],
    )?;
    Ok(rows
        .iter()
        .map(|row| LinkageRecord {
            id: row.get(0),
            call_id: row.get(1),
            from_platform: row.get(2),
            from_peer: row.get(3),
            to_platform: row.get(4),
            to_peer: row.get(5),
            target: row.get(6),
            trigger: row.get(7),
            requested_at: row.get(8),
            ringing_at: row.get(9),
            answered_at: row.get(10),
            ended_at: row.get(11),
            outcome: row.get(12),
            sip_status: row
                .get::<_, Option<i32>>(13)
                .and_then(|s| u16::try_from(s).ok()),
            kind: row.get(14),
            incident_number: row.get(15),
            disposition: row.get(16),
            replied_at: row.get(17),
        })
        .collect())
}

/// One linkage by its id.
pub(in crate::store) fn find_linkage(
    client: &mut impl GenericClient,
    linkage_id: &str,
) -> Result<Option<LinkageRecord>, StoreError> {
    let call_id: Option<String> = client
        .query_opt("SELECT call_id FROM linkages WHERE id = $1", &[&linkage_id])?
        .map(|row| row.get(0));
    let Some(call_id) = call_id else {
        return Ok(None);
    };
    Ok(linkages_of(client, &call_id)?
        .into_iter()
        .find(|l| l.id == linkage_id))
}

pub(in crate::store) fn parties_of(
    client: &mut impl GenericClient,
    call_id: &str,
) -> Result<Vec<ConferencePartyRecord>, StoreError> {
    let rows = client.query(
        "SELECT call_id, party, peer, number, joined_at, left_at
         FROM conference_parties WHERE call_id = $1 ORDER BY joined_at, party",
        &[&call_id],
    )?;
    Ok(rows
        .iter()
        .map(|row| ConferencePartyRecord {
            call_id: row.get(0),
            party: u8::try_from(row.get::<_, i16>(1)).unwrap_or(u8::MAX),
            peer: row.get(2),
            number: row.get(3),
            joined_at: row.get(4),
            left_at: row.get(5),
        })
        .collect())
}

fn blocked_row(row: &Row) -> BlockedNumberRecord {
    BlockedNumberRecord {
        number: row.get(0),
        platform: row.get(1),
        reason: row.get(2),
        blocked_at: row.get(3),
        expires_at: row.get(4),
    }
}

/// The numbers blocked through the API that have not expired at `now` (Unix ms).
pub(in crate::store) fn list_blocked(
    client: &mut impl GenericClient,
    now: i64,
) -> Result<Vec<BlockedNumberRecord>, StoreError> {
    let rows = client.query(
        "SELECT number, platform, reason, blocked_at, expires_at FROM blocked_numbers
         WHERE expires_at IS NULL OR expires_at > $1 ORDER BY number",
        &[&now],
    )?;
    Ok(rows.iter().map(blocked_row).collect())
}

/// One number's entry on the API's blocklist, if it has one.
pub(in crate::store) fn blocked(
    client: &mut impl GenericClient,
    number: &str,
) -> Result<Option<BlockedNumberRecord>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT number, platform, reason, blocked_at, expires_at FROM blocked_numbers
             WHERE number = $1",
            &[&number],
        )?
        .as_ref()
        .map(blocked_row))
}

/// Up to `limit` events of `platform`'s outbox after `after`, in order.
pub(in crate::store) fn read_outbox(
    client: &mut impl GenericClient,
    platform: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<OutboxRecord>, StoreError> {
    let rows = client.query(
        "SELECT platform, sequence, event_id, call_id, created_at, body FROM outbox
         WHERE platform = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        &[&platform, &(after as i64), &(limit as i64)],
    )?;
    Ok(rows
        .iter()
        .map(|row| OutboxRecord {
            platform: row.get(0),
            sequence: row.get::<_, i64>(1).max(0) as u64,
            event_id: row.get(2),
            call_id: row.get(3),
            created_at: row.get(4),
            body: row.get::<_, Vec<u8>>(5).into(),
        })
        .collect())
}

/// The oldest sequence of `platform` still kept (0: none).
pub(in crate::store) fn oldest(
    client: &mut impl GenericClient,
    platform: &str,
) -> Result<u64, StoreError> {
    let oldest: Option<i64> = client
        .query_one(
            "SELECT MIN(sequence) FROM outbox WHERE platform = $1",
            &[&platform],
        )?
        .get(0);
    Ok(oldest.map_or(0, |s| s.max(0) as u64))
}

/// `platform`'s newest sequence and its last acknowledgement.
pub(in crate::store) fn position(
    client: &mut impl GenericClient,
    platform: &str,
) -> Result<(u64, u64), StoreError> {
    let row = client.query_one(
        "SELECT (SELECT latest FROM outbox_sequences WHERE platform = $1),
                (SELECT sequence FROM outbox_acks WHERE platform = $1)",
        &[&platform],
    )?;
    let latest: Option<i64> = row.get(0);
    let acked: Option<i64> = row.get(1);
    Ok((
        latest.unwrap_or(0).max(0) as u64,
        acked.unwrap_or(0).max(0) as u64,
    ))
}

/// Each platform's newest sequence and its last acknowledgement.
pub(in crate::store) fn positions(
    client: &mut impl GenericClient,
) -> Result<HashMap<String, (u64, u64)>, StoreError> {
    let mut positions: HashMap<String, (u64, u64)> = HashMap::new();
    for row in client.query("SELECT platform, latest FROM outbox_sequences", &[])? {
        positions.insert(row.get(0), (row.get::<_, i64>(1).max(0) as u64, 0));
    }
    for row in client.query("SELECT platform, sequence FROM outbox_acks", &[])? {
        let acked = row.get::<_, i64>(1).max(0) as u64;
        let entry = positions.entry(row.get(0)).or_insert((acked, 0));
        entry.0 = entry.0.max(acked);
        entry.1 = acked;
    }
    Ok(positions)
}

/// Each platform that has events of `call_id`, with the body of its newest.
fn seen(
    client: &mut impl GenericClient,
    call_id: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let rows = client.query(
        "SELECT DISTINCT ON (platform) platform, body FROM outbox WHERE call_id = $1
         ORDER BY platform, sequence DESC",
        &[&call_id],
    )?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Closes what `node` left open, in `transaction`: its calls not ended get `ended_by =
/// 'gateway'` and `end_reason = reason` (200 if they were answered, else 503); their linkages
/// under way fail (503) and their conference parties still in leave; the events `recovery`
/// makes of each go to the outbox, numbered as any commit's, and are announced. Returns how
/// many calls were closed.
pub(in crate::store) fn close_node(
    transaction: &mut postgres::Transaction<'_>,
    node: &str,
    now: i64,
    reason: &str,
    recovery: Option<&Recovery>,
) -> Result<usize, StoreError> {
    // The counter rows first, in name order, as every writer takes them; then the calls, so
    // none of them ends meanwhile (its ending would be sent twice).
    transaction.execute(
        "SELECT platform FROM outbox_sequences ORDER BY platform FOR UPDATE",
        &[],
    )?;
    let calls = {
        let rows = transaction.query(
            &format!(
                "SELECT {CALL_COLUMNS} FROM calls WHERE ended_at IS NULL AND node = $1
                 ORDER BY started_at, id FOR UPDATE"
            ),
            &[&node],
        )?;
        rows.iter().map(call_row).collect::<Vec<_>>()
    };
    let mut events: Vec<NewEvent> = Vec::new();
    for call in &calls {
        let interrupted = Interrupted {
            linkages: linkages_of(transaction, &call.id)?
                .into_iter()
                .filter(|l| l.ended_at.is_none())
                .collect(),
            parties: parties_of(transaction, &call.id)?
                .into_iter()
                .filter(|p| p.left_at.is_none())
                .collect(),
            seen: seen(transaction, &call.id)?,
            call: call.clone(),
            reason: reason.to_string(),
        };
        if let Some(recovery) = recovery {
            events.extend(recovery(&interrupted, now));
        }
    }
    transaction.execute(
        "UPDATE linkages SET ended_at = $1, outcome = 'failed', sip_status = 503
         WHERE ended_at IS NULL AND call_id IN
             (SELECT id FROM calls WHERE node = $2 AND ended_at IS NULL)",
        &[&now, &node],
    )?;
    transaction.execute(
        "UPDATE conference_parties SET left_at = $1 WHERE left_at IS NULL AND call_id IN
             (SELECT id FROM calls WHERE node = $2 AND ended_at IS NULL)",
        &[&now, &node],
    )?;
    transaction.execute(
        "UPDATE calls SET ended_at = $1, ended_by = 'gateway', end_reason = $3,
             final_status = COALESCE(final_status,
                 CASE WHEN answered_at IS NOT NULL THEN 200 ELSE 503 END)
         WHERE ended_at IS NULL AND node = $2",
        &[&now, &node, &reason],
    )?;
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for event in &events {
        *counts.entry(event.platform.as_str()).or_insert(0) += 1;
    }
    let mut next: HashMap<&str, i64> = HashMap::new();
    for (platform, count) in &counts {
        let newest: i64 = transaction
            .query_one(
                "INSERT INTO outbox_sequences (platform, latest) VALUES ($1, $2)
                 ON CONFLICT (platform) DO UPDATE
                     SET latest = outbox_sequences.latest + excluded.latest
                 RETURNING latest",
                &[platform, count],
            )?
            .get(0);
        next.insert(platform, newest - count + 1);
        transaction.execute(
            "SELECT pg_notify($1, $2)",
            &[&OUTBOX_CHANNEL, &format!("{newest} {platform}")],
        )?;
    }
    for event in &events {
        let Some(sequence) = next.get_mut(event.platform.as_str()) else {
            continue;
        };
        transaction.execute(
            "INSERT INTO outbox (platform, sequence, event_id, call_id, created_at, body)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &event.platform,
                &*sequence,
                &event.event_id,
                &event.call_id,
                &event.created_at,
                &&*event.body,
            ],
        )?;
        *sequence += 1;
    }
    Ok(calls.len())
}
