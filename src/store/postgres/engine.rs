//! The writer's engine on PostgreSQL: a batch's writes in one transaction, statements
//! prepared once per connection, the connection opened again when lost.

use std::collections::{BTreeMap, HashMap};

use postgres::error::SqlState;
use postgres::{Client, Statement};

use super::super::outbox::NewEvent;
use super::super::writer::{Change, Engine, EngineError, WriteOp};
use super::super::CallRecord;
use super::{
    describe, DatabaseUrl, ACKS_CHANNEL, ARRIVALS_CHANNEL, BLOCKLIST_CHANNEL, OUTBOX_CHANNEL,
};

/// The writer's connection, opened again when lost.
pub(in crate::store) struct PostgresEngine {
    url: DatabaseUrl,
    node: String,
    connection: Option<(Client, Statements)>,
}

/// The writes, prepared once per connection.
struct Statements {
    call: Statement,
    answered: Statement,
    linkage: Statement,
    reply: Statement,
    party: Statement,
    block: Statement,
    unblock: Statement,
    event: Statement,
    counter: Statement,
    ack: Statement,
    prune: Statement,
    notify: Statement,
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            // A batch's call records in one statement, each call's newest only (one row may
            // not be changed twice by one statement).
            call: client.prepare(
                "INSERT INTO calls (id, node, a_call_id, b_call_id, caller, called, a_peer,
                     b_peer, started_at, answered_at, ended_at, ended_by, end_reason,
                     final_status, rtp_a_to_b, rtp_b_to_a, rtp_dropped, a_interface,
                     b_interface, recording)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                     $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[],
                     $10::bigint[], $11::bigint[], $12::text[], $13::text[], $14::integer[],
                     $15::bigint[], $16::bigint[], $17::bigint[], $18::text[], $19::text[], $20::text[])
                 ON CONFLICT (id) DO UPDATE SET b_call_id = excluded.b_call_id,
                     b_peer = excluded.b_peer, b_interface = excluded.b_interface,
                     answered_at = excluded.answered_at,
                     ended_at = excluded.ended_at, ended_by = excluded.ended_by,
                     end_reason = excluded.end_reason, final_status = excluded.final_status,
                     rtp_a_to_b = excluded.rtp_a_to_b, rtp_b_to_a = excluded.rtp_b_to_a,
                     rtp_dropped = excluded.rtp_dropped, recording = excluded.recording
                 -- A call a survivor closed for its lost node stays as the platforms were told
                 -- (its node came back late and still writes).
                 WHERE calls.end_reason IS DISTINCT FROM 'node lost'",
            )?,
            answered: client.prepare(
                "UPDATE calls SET b_call_id = $2, b_peer = $3, answered_at = $4,
                     b_interface = $5 WHERE id = $1 AND ended_at IS NULL",
            )?,
            // A reply may have come while the linkage was under way: its columns stay.
            linkage: client.prepare(
                "INSERT INTO linkages (id, call_id, from_platform, from_peer, to_platform,
                     to_peer, target, trigger, requested_at, ringing_at, answered_at, ended_at,
                     outcome, sip_status, kind)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                 ON CONFLICT (id) DO UPDATE SET call_id = excluded.call_id,
                     from_platform = excluded.from_platform, from_peer = excluded.from_peer,
                     to_platform = excluded.to_platform, to_peer = excluded.to_peer,
                     target = excluded.target, trigger = excluded.trigger,
                     requested_at = excluded.requested_at, ringing_at = excluded.ringing_at,
                     answered_at = excluded.answered_at, ended_at = excluded.ended_at,
                     outcome = excluded.outcome, sip_status = excluded.sip_status,
                     kind = excluded.kind",
            )?,
            reply: client.prepare(
                "UPDATE linkages SET
                     incident_number = COALESCE(NULLIF($2, ''), incident_number),
                     disposition = COALESCE(NULLIF($3, ''), disposition),
                     replied_at = $4
                 WHERE id = $1",
            )?,
            party: client.prepare(
                "INSERT INTO conference_parties (call_id, party, peer, number, joined_at,
                     left_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (call_id, party, joined_at) DO UPDATE SET peer = excluded.peer,
                     number = excluded.number, left_at = excluded.left_at",
            )?,
            block: client.prepare(
                "INSERT INTO blocked_numbers (number, platform, reason, blocked_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (number) DO UPDATE SET platform = excluded.platform,
                     reason = excluded.reason, blocked_at = excluded.blocked_at,
                     expires_at = excluded.expires_at",
            )?,
            unblock: client.prepare("DELETE FROM blocked_numbers WHERE number = $1")?,
            // A batch's events in one statement (a round trip per event was most of a batch's
            // time).
            event: client.prepare(
                "INSERT INTO outbox (platform, sequence, event_id, call_id, created_at, body)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[],
                     $5::bigint[], $6::bytea[])",
            )?,
            // Takes the platform's counter row for the rest of the transaction: the order of
            // the nodes' commits.
            counter: client.prepare(
                "INSERT INTO outbox_sequences (platform, latest) VALUES ($1, $2)
                 ON CONFLICT (platform) DO UPDATE
                     SET latest = outbox_sequences.latest + excluded.latest
                 RETURNING latest",
            )?,
            ack: client.prepare(
                "INSERT INTO outbox_acks (platform, sequence) VALUES ($1, $2)
                 ON CONFLICT (platform) DO UPDATE
                     SET sequence = GREATEST(outbox_acks.sequence, excluded.sequence)",
            )?,
            // A call still open keeps its events: whoever closes it finds there which
            // platforms saw it.
            prune: client.prepare(
                "DELETE FROM outbox WHERE created_at < $1 AND call_id NOT IN
                     (SELECT id FROM calls WHERE ended_at IS NULL)",
            )?,
            notify: client.prepare("SELECT pg_notify($1, $2)")?,
        })
    }
}

impl PostgresEngine {
    pub(in crate::store) fn new(url: DatabaseUrl, node: String, client: Client) -> PostgresEngine {
        let mut engine = PostgresEngine {
            url,
            node,
            connection: None,
        };
        let mut client = client;
        if let Ok(statements) = Statements::prepare(&mut client) {
            engine.connection = Some((client, statements));
        }
        engine
    }

    fn connection(&mut self) -> Result<&mut (Client, Statements), postgres::Error> {
        if self
            .connection
            .as_ref()
            .is_some_and(|(client, _)| client.is_closed())
        {
            self.connection = None;
        }
        if self.connection.is_none() {
            let mut client = self.url.connect()?;
            let statements = Statements::prepare(&mut client)?;
            self.connection = Some((client, statements));
        }
        match self.connection.as_mut() {
            Some(connection) => Ok(connection),
            None => unreachable!("connected just above"),
        }
    }
}

impl Engine for PostgresEngine {
    fn write_batch(
        &mut self,
        batch: &[WriteOp],
        sequences: &mut HashMap<String, u64>,
    ) -> Result<Vec<u64>, EngineError> {
        let node = self.node.clone();
        let result = self
            .connection()
            .and_then(|(client, statements)| write_batch(client, statements, &node, batch));
        match result {
            Ok((numbers, latest)) => {
                sequences.extend(latest);
                Ok(numbers)
            }
            Err(error) => {
                let (retry, cause) = classify(&error);
                if retry {
                    // A connection that failed mid-transaction is not trusted again.
                    self.connection = None;
                }
                Err(EngineError {
                    message: describe(&error),
                    retry,
                    cause,
                })
            }
        }
    }
}

/// Whether another attempt may succeed, and what an operator should look at first.
fn classify(error: &postgres::Error) -> (bool, &'static str) {
    let Some(code) = error.code() else {
        // No answer from the server: the connection is gone or was never made.
        return (
            true,
            "the database is unreachable or the connection was lost",
        );
    };
    let class = &code.code()[..2.min(code.code().len())];
    match class {
        "08" => (
            true,
            "the database is unreachable or the connection was lost",
        ),
        "53" => (
            true,
            "the database server is out of disk, memory or connections",
        ),
        "57" => (true, "the database server is shutting down or starting"),
        "40" => (true, "a conflict with another node's transaction"),
        "58" => (true, "the database server reports I/O errors"),
        "28" => (true, "the database refuses the gateway's user or password"),
        _ if *code == SqlState::READ_ONLY_SQL_TRANSACTION => {
            (true, "the database is read-only (a standby?)")
        }
        _ if *code == SqlState::INSUFFICIENT_PRIVILEGE => (
            true,
            "the database user lacks a privilege on the gateway's tables",
        ),
        _ => (false, "see the error"),
    }
}

/// Writes `batch` in one transaction; returns its events' sequences, in order, and each
/// platform's newest after it.
fn write_batch(
    client: &mut Client,
    statements: &Statements,
    node: &str,
    batch: &[WriteOp],
) -> Result<(Vec<u64>, HashMap<String, u64>), postgres::Error> {
    let mut transaction = client.transaction()?;
    // The counter rows first, in name order: every node takes them in the same order.
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for op in batch {
        if let WriteOp::Write { events, .. } = op {
            for event in events {
                *counts.entry(event.platform.as_str()).or_insert(0) += 1;
            }
        }
    }
    let mut next: HashMap<&str, u64> = HashMap::new();
    let mut latest: HashMap<String, u64> = HashMap::new();
    for (platform, count) in &counts {
        let newest: i64 = transaction
            .query_one(&statements.counter, &[platform, count])?
            .get(0);
        next.insert(platform, (newest - count + 1).max(1) as u64);
        latest.insert((*platform).to_string(), newest.max(0) as u64);
    }
    let mut numbers = Vec::new();
    let mut blocklist: Vec<&str> = Vec::new();
    let mut arrivals: Vec<(&str, &str)> = Vec::new();
    // Each platform's newest Ack of the batch, applied in name order after the rest (rows
    // taken in one order on every node).
    let mut acks: BTreeMap<&str, u64> = BTreeMap::new();
    let mut rows: Vec<(&NewEvent, i64)> = Vec::new();
    write_calls(&mut transaction, statements, node, batch)?;
    for op in batch {
        match op {
            WriteOp::Write {
                changes, events, ..
            } => {
                for change in changes {
                    write_change(&mut transaction, statements, change)?;
                    match change {
                        Change::Started(call) => arrivals.push((&call.id, &call.caller)),
                        Change::Block(b) => blocklist.push(&b.number),
                        Change::Unblock(number) => blocklist.push(number),
                        _ => {}
                    }
                }
                for event in events {
                    let Some(sequence) = next.get_mut(event.platform.as_str()) else {
                        continue;
                    };
                    rows.push((event, *sequence as i64));
                    numbers.push(*sequence);
                    *sequence += 1;
                }
            }
            WriteOp::Ack { platform, sequence } => {
                let newest = acks.entry(platform.as_str()).or_insert(0);
                *newest = (*newest).max(*sequence);
            }
            WriteOp::Prune(before) => {
                transaction.execute(&statements.prune, &[before])?;
            }
            WriteOp::Flush(_) | WriteOp::Ping(_) => {}
        }
    }
    if !rows.is_empty() {
        let platforms: Vec<&str> = rows.iter().map(|(e, _)| e.platform.as_str()).collect();
        let sequences: Vec<i64> = rows.iter().map(|(_, s)| *s).collect();
        let ids: Vec<&str> = rows.iter().map(|(e, _)| e.event_id.as_str()).collect();
        let calls: Vec<&str> = rows.iter().map(|(e, _)| e.call_id.as_str()).collect();
        let created: Vec<i64> = rows.iter().map(|(e, _)| e.created_at).collect();
        let bodies: Vec<&[u8]> = rows.iter().map(|(e, _)| &*e.body).collect();
        transaction.execute(
            &statements.event,
            &[&platforms, &sequences, &ids, &calls, &created, &bodies],
        )?;
    }
    for (platform, sequence) in &acks {
        transaction.execute(&statements.ack, &[platform, &(*sequence as i64)])?;
        transaction.execute(
            &statements.notify,
            &[&ACKS_CHANNEL, &format!("{sequence} {platform}")],
        )?;
    }
    // Delivered to every listening node once this commits, in commit order.
    for (platform, newest) in &latest {
        transaction.execute(
            &statements.notify,
            &[&OUTBOX_CHANNEL, &format!("{newest} {platform}")],
        )?;
    }
    for number in blocklist {
        transaction.execute(
            &statements.notify,
            &[&BLOCKLIST_CHANNEL, &format!("{node} {number}")],
        )?;
    }
    // The new calls' callers, a line each after the node's name, in notifications of at
    // most 7,000 bytes (the limit is 8,000); the call's id keeps two calls of one caller
    // apart; a caller no phone number could be is not told.
    let mut payload = String::new();
    for (id, caller) in arrivals.iter().filter(|(_, caller)| caller.len() <= 64) {
        if payload.is_empty() {
            payload.push_str(node);
        }
        payload.push('\n');
        payload.push_str(id);
        payload.push(' ');
        payload.push_str(caller);
        if payload.len() > 7_000 {
            transaction.execute(&statements.notify, &[&ARRIVALS_CHANNEL, &payload])?;
            payload.clear();
        }
    }
    if !payload.is_empty() {
        transaction.execute(&statements.notify, &[&ARRIVALS_CHANNEL, &payload])?;
    }
    transaction.commit()?;
    Ok((numbers, latest))
}

/// The batch's call records (starts and ends), each call's newest, in one statement; before
/// the batch's answers, which then find the row (an answer to a call whose end is in the
/// batch changes nothing: the end has it).
fn write_calls(
    transaction: &mut postgres::Transaction<'_>,
    statements: &Statements,
    node: &str,
    batch: &[WriteOp],
) -> Result<(), postgres::Error> {
    let mut newest: HashMap<&str, &CallRecord> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for op in batch {
        if let WriteOp::Write { changes, .. } = op {
            for change in changes {
                if let Change::Started(r) | Change::Ended(r) = change {
                    if newest.insert(r.id.as_str(), r).is_none() {
                        order.push(r.id.as_str());
                    }
                }
            }
        }
    }
    if order.is_empty() {
        return Ok(());
    }
    let records: Vec<&CallRecord> = order
        .iter()
        .filter_map(|id| newest.get(id).copied())
        .collect();
    let text = |f: fn(&CallRecord) -> &str| records.iter().map(|r| f(r)).collect::<Vec<&str>>();
    let optional =
        |f: fn(&CallRecord) -> Option<&str>| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    let number = |f: fn(&CallRecord) -> i64| records.iter().map(|r| f(r)).collect::<Vec<i64>>();
    let maybe =
        |f: fn(&CallRecord) -> Option<i64>| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    let nodes: Vec<&str> = records.iter().map(|_| node).collect();
    let statuses: Vec<Option<i32>> = records
        .iter()
        .map(|r| r.final_status.map(i32::from))
        .collect();
    transaction.execute(
        &statements.call,
        &[
            &text(|r| &r.id),
            &nodes,
            &text(|r| &r.a_call_id),
            &optional(|r| r.b_call_id.as_deref()),
            &text(|r| &r.caller),
            &text(|r| &r.called),
            &text(|r| &r.a_peer),
            &optional(|r| r.b_peer.as_deref()),
            &number(|r| r.started_at),
            &maybe(|r| r.answered_at),
            &maybe(|r| r.ended_at),
            &optional(|r| r.ended_by.as_deref()),
            &optional(|r| r.end_reason.as_deref()),
            &statuses,
            &number(|r| r.rtp_a_to_b as i64),
            &number(|r| r.rtp_b_to_a as i64),
            &number(|r| r.rtp_dropped as i64),
            &text(|r| &r.a_interface),
            &optional(|r| r.b_interface.as_deref()),
            &optional(|r| r.recording.as_deref()),
        ],
    )?;
    Ok(())
}

fn write_change(
    transaction: &mut postgres::Transaction<'_>,
    statements: &Statements,
    change: &Change,
) -> Result<(), postgres::Error> {
    match change {
        // Written before the batch's other changes, all at once (write_calls).
        Change::Started(_) | Change::Ended(_) => {}
        Change::Answered {
            id,
            b_call_id,
            b_peer,
            b_interface,
            answered_at,
        } => {
            transaction.execute(
                &statements.answered,
                &[id, b_call_id, b_peer, answered_at, b_interface],
            )?;
        }
        Change::Linkage(l) => {
            transaction.execute(
                &statements.linkage,
                &[
                    &l.id,
                    &l.call_id,
                    &l.from_platform,
                    &l.from_peer,
                    &l.to_platform,
                    &l.to_peer,
                    &l.target,
                    &l.trigger,
                    &l.requested_at,
                    &l.ringing_at,
                    &l.answered_at,
                    &l.ended_at,
                    &l.outcome,
                    &l.sip_status.map(i32::from),
                    &l.kind,
                ],
            )?;
        }
        Change::LinkageReply {
            linkage_id,
            incident_number,
            disposition,
            replied_at,
        } => {
            transaction.execute(
                &statements.reply,
                &[linkage_id, incident_number, disposition, replied_at],
            )?;
        }
        Change::ConferenceParty(p) => {
            transaction.execute(
                &statements.party,
                &[
                    &p.call_id,
                    &i16::from(p.party),
                    &p.peer,
                    &p.number,
                    &p.joined_at,
                    &p.left_at,
                ],
            )?;
        }
        Change::Block(b) => {
            transaction.execute(
                &statements.block,
                &[
                    &b.number,
                    &b.platform,
                    &b.reason,
                    &b.blocked_at,
                    &b.expires_at,
                ],
            )?;
        }
        Change::Unblock(number) => {
            transaction.execute(&statements.unblock, &[number])?;
        }
    }
    Ok(())
}
