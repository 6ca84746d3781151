//! The task that drives one [`Call`]: feeds it SIP events, relay events, the clock and shutdown,
//! and carries out its actions (endpoint, relay, store, metrics).
//!
//! Each step of the call is carried out in two halves: first what the step *is* (record
//! changes, the work-order events that report it), committed in one transaction; then what
//! makes it *seen* (SIP messages, media, dialog and directory entries, what the platforms may
//! read of the call, command results). So no peer and no platform sees a step whose events a
//! crash could still lose, as long as the store writes: while it cannot (a full disk, a lock
//! held past the busy timeout), the step is held in memory and goes on, and a crash then loses
//! it (`hotline_store_degraded` says so).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use std::collections::HashMap;

use super::link::Link;
use crate::call::model::{
    Action, Call, ConferenceUpdate, EndedBy, LinkageUpdate, Outcome, QueueUpdate,
};
use crate::media::recording::{Recorder, Recording};
use crate::media::relay::{MediaEvent, RelayHandle};
use crate::media::MediaCommand;
use crate::metrics::{CallResult, Counter, DeskOutcome, Gauge, Metrics};
use crate::sip::endpoint::{EndpointHandle, Owner};
use crate::store::{unix_millis, CallRecord, Changes, ConferencePartyRecord, LinkageRecord, Store};

/// The calls' clock (this driver's, admission's, the work-order link's), read from tokio's, so
/// that a test on `tokio::time::pause()`d time moves the call's timers with
/// `tokio::time::advance`; the call model gets it as a plain `Instant`.
pub(crate) fn driver_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What every call task shares.
#[derive(Clone)]
pub struct CallServices {
    pub endpoint: EndpointHandle,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Tracks running call tasks so shutdown can wait for them.
    pub tracker: tokio_util::task::TaskTracker,
    /// Bridged calls' dialogs (shared with the calls' settings for lookups).
    pub directory: Arc<crate::call::directory::Directory>,
    /// Each interface's port pairs, for conference guests (legs A and B get theirs at
    /// admission).
    pub ports: Arc<crate::media::ports::PortPools>,
    /// The work-order link: where the calls' events go, and how commands reach the calls.
    pub events: Arc<crate::workorder::hub::EventHub>,
    pub registry: Arc<crate::workorder::registry::CallRegistry>,
    /// `[recording]`: the recorder, and the routes and peers that say what is not recorded.
    pub recording: Option<(Recorder, Arc<crate::routing::Router>)>,
    /// `[recording] siprec`: each recorded call also goes to this recording server.
    pub siprec: Option<Arc<crate::call::siprec::SiprecSettings>>,
    /// `[cdr]`: where each ended call's detail record is appended.
    pub cdr: Option<super::cdr::CdrFile>,
    /// The media port pairs kept for the reserved platforms' calls (`reserved_calls`): what
    /// a SIPREC session's ports leave free.
    pub reserved_port_pairs: usize,
}

/// What admission decided about a new call, for its task.
pub struct Admission {
    /// Holds the call's slot until the task ends.
    pub guard: super::admission::ActiveGuard,
    /// Screening flagged the call (a repeat caller): why.
    pub flag: Option<String>,
}

/// Starts the task of a new call. `inbox`/`owner` are the call's SIP event channel.
pub fn spawn(
    call: Call,
    inbox: crate::sip::endpoint::Inbox,
    owner: Owner,
    relay: RelayHandle,
    record: CallRecord,
    services: CallServices,
    admission: Admission,
) {
    let Admission { guard, flag } = admission;
    let span = tracing::info_span!("call", id = %call.id(), caller = %record.caller, called = %record.called);
    let tracker = services.tracker.clone();
    tracker.spawn(
        async move {
            run(call, inbox, owner, relay, record, services, flag).await;
            drop(guard);
        }
        .instrument(span),
    );
}

async fn run(
    mut call: Call,
    mut inbox: crate::sip::endpoint::Inbox,
    owner: Owner,
    mut relay: RelayHandle,
    record: CallRecord,
    services: CallServices,
    flag: Option<String>,
) {
    services.metrics.add_gauge(Gauge::CallsActive, 1);
    tracing::info!("call offered");
    let mut shutdown_seen = false;
    let (link, mut commands) = Link::open(
        &record,
        &call,
        Arc::clone(&services.events),
        &services.registry,
        flag,
    );
    let mut changes = Changes::default();
    changes.call_started(record.clone());
    let mut records = Records {
        call: record,
        linkages: HashMap::new(),
        settled: Vec::new(),
        desk: None,
        detail: None,
        parties: Vec::new(),
        link,
        changes,
        recording: None,
        siprec: None,
        queued: false,
        offered: driver_now(),
        ringing: None,
        answered: None,
    };
    let mut desks = call.desk_signal();
    loop {
        if carry_out(&mut call, &owner, &relay, &mut records, &services).await {
            break;
        }
        let deadline = [
            call.poll_timeout(),
            records.siprec.as_ref().and_then(|s| s.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => {
                    // The recording session's own messages first; the rest is the call's.
                    let now = driver_now();
                    let event = match records.siprec.as_mut() {
                        Some(siprec) => siprec.handle_sip(now, event),
                        None => Some(event),
                    };
                    if let Some(event) = event {
                        call.handle_sip(now, event);
                    }
                }
                None => {
                    // The endpoint is gone (the gateway is stopping): end the call's records
                    // and events the usual way; its last messages can no longer go out.
                    call.handle_shutdown(driver_now());
                    let _ = carry_out(&mut call, &owner, &relay, &mut records, &services).await;
                    break;
                }
            },
            event = relay.event() => match event {
                MediaEvent::Inactive => call.handle_media_inactive(driver_now()),
                MediaEvent::Digit(party, digit) => call.handle_media_digit(driver_now(), party, digit),
            },
            Ok(()) = desks.changed(), if call.waits_for_desks() => {
                call.handle_desks_freed(driver_now());
            }
            _ = sleep => {
                let now = driver_now();
                call.handle_timeout(now);
                if let Some(siprec) = records.siprec.as_mut() {
                    siprec.handle_timeout(now);
                }
            }
            Some(command) = commands.recv() => {
                records.link.command(&mut call, records.recording.as_mut(), command);
                if let Some(siprec) = records.siprec.as_mut() {
                    siprec.ticket(records.link.ticket_number());
                }
            }
            _ = services.shutdown.cancelled(), if !shutdown_seen => {
                shutdown_seen = true;
                call.handle_shutdown(driver_now());
            }
        }
    }
    services.registry.remove(&records.link.call_id());
    services.metrics.add_gauge(Gauge::CallsActive, -1);
    tracing::debug!("call finished");
    if let Some(siprec) = records.siprec.take() {
        let linger = super::siprec::linger(siprec, inbox, owner, services.clone());
        services.tracker.spawn(linger.in_current_span());
    }
}

/// The settled linkages a call's detail record keeps (a call transferred again and again
/// keeps its newest).
const CDR_LINKAGES: usize = 32;

/// What a call's task keeps of its records while it runs.
pub(super) struct Records {
    pub(super) call: CallRecord,
    linkages: HashMap<String, LinkageRecord>,
    /// With `[cdr]`: the linkages settled so far (the newest [`CDR_LINKAGES`]), for the
    /// call's detail record.
    settled: Vec<LinkageRecord>,
    /// The desk the call was offered to (the last tried before an answer) or that answered
    /// it: where its figures count.
    desk: Option<String>,
    /// The call's detail record, once it ended: appended to `[cdr]`'s file after the commit.
    detail: Option<crate::store::CallDetail>,
    /// Conference parties still in (their `left_at` unset).
    parties: Vec<ConferencePartyRecord>,
    pub(super) link: Link,
    /// The record changes of the step under way, not yet written.
    changes: Changes,
    /// The call's recording, from the answer on (with `[recording]`).
    pub(super) recording: Option<Recording>,
    /// Its SIPREC session (with `[recording] siprec`).
    pub(super) siprec: Option<super::siprec::Siprec>,
    /// The call waits in its route's queue (counted in `hotline_queue_waiting`).
    queued: bool,
    /// When the call was offered and first rang, for the recording's steps.
    pub(super) offered: Instant,
    pub(super) ringing: Option<Instant>,
    /// When a desk answered (the desk figures' ring time).
    answered: Option<Instant>,
}

/// Carries out every pending action; returns true once the call has finished. What the step
/// is (records, events) is noted and committed first; what makes it seen goes after.
async fn carry_out(
    call: &mut Call,
    owner: &Owner,
    relay: &RelayHandle,
    records: &mut Records,
    services: &CallServices,
) -> bool {
    let mut seen = Vec::new();
    let mut finished = false;
    while let Some(action) = call.poll_action() {
        let record = &mut records.call;
        match action {
            Action::Attempt {
                b_call_id,
                b_peer,
                b_interface,
            } => {
                records.link.attempt(&b_peer, call.b_platform());
                if record.answered_at.is_none() {
                    // The desk the call is offered to (a leg taken over later is not one).
                    records.desk = Some(b_peer.clone());
                }
                record.b_call_id = Some(b_call_id);
                record.b_peer = Some(b_peer);
                record.b_interface = Some(b_interface);
            }
            Action::Ringing => {
                records.ringing.get_or_insert_with(driver_now);
                records.link.ringing();
            }
            Action::Hotkey {
                dtmf,
                action,
                target,
            } => records.link.hotkey(&dtmf, action, &target),
            Action::Answered {
                b_call_id,
                b_peer,
                b_interface,
            } => {
                if let Some(recording) = super::recording::begin(records, &b_peer, services) {
                    seen.push(Action::Media(MediaCommand::Record(recording)));
                    super::siprec::begin(records, &b_peer, services);
                }
                records.desk = Some(b_peer.clone());
                records.answered = Some(driver_now());
                let record = &mut records.call;
                let now = unix_millis(SystemTime::now());
                records.link.answered(now);
                record.answered_at = Some(now);
                tracing::info!(peer = %b_peer, interface = %b_interface, "call answered");
                records.changes.call_answered_on(
                    &record.id,
                    &b_call_id,
                    (&b_peer, &b_interface),
                    now,
                );
            }
            // A guest's port pair, given and taken back at once: the model's own bookkeeping
            // (a port freed here may serve a guest opened in the same step).
            Action::CloseParty(party) => relay.remove_party(party),
            Action::OpenParty { interface } => {
                let opened = services
                    .ports
                    .of(usize::from(interface.0))
                    .allocate()
                    .ok()
                    .and_then(|lease| relay.add_party(lease));
                call.handle_party_opened(driver_now(), opened);
            }
            Action::Queue(update) => {
                records.link.queue(&update);
                track_queue(&mut records.queued, &update, &services.metrics);
            }
            Action::Conference(update) => {
                super::recording::conference(records.recording.as_ref(), &update);
                if let Some(siprec) = records.siprec.as_mut() {
                    siprec.conference(&update);
                }
                records.link.conference(&update);
                track_conference(
                    &mut records.parties,
                    &mut records.changes,
                    record,
                    update,
                    &services.metrics,
                );
            }
            Action::Linkage(update) => {
                let linkage = track_linkage(
                    &mut records.linkages,
                    record,
                    update.clone(),
                    &services.metrics,
                );
                records.link.linkage(&update, &linkage);
                if let Some(siprec) = records.siprec.as_mut() {
                    siprec.linkage(&update, &linkage);
                }
                super::recording::linkage(
                    records.recording.as_ref(),
                    &records.link,
                    &update,
                    &linkage,
                );
                if services.cdr.is_some() && linkage.ended_at.is_some() {
                    if records.settled.len() == CDR_LINKAGES {
                        records.settled.remove(0);
                    }
                    records.settled.push(linkage.clone());
                }
                records.changes.linkage(linkage);
            }
            Action::Ended(outcome) => {
                records.link.ended(&outcome);
                track_conference(
                    &mut records.parties,
                    &mut records.changes,
                    record,
                    ConferenceUpdate::Ended,
                    &services.metrics,
                );
                finish_record(record, relay, &outcome, &services.metrics);
                let rang = records
                    .ringing
                    .zip(records.answered)
                    .map(|(rang, answered)| {
                        u64::try_from(answered.saturating_duration_since(rang).as_millis())
                            .unwrap_or(u64::MAX)
                    });
                count_desk_call(
                    call,
                    records.desk.as_deref(),
                    rang,
                    record,
                    &services.metrics,
                );
                if let Some(siprec) = records.siprec.as_mut() {
                    siprec.end();
                }
                if std::mem::take(&mut records.queued) {
                    // Ended while it waited, by none of the queue's own ends (a shutdown).
                    services.metrics.add_gauge(Gauge::QueueWaiting, -1);
                }
                if let Some(recording) = records.recording.take() {
                    recording.end(driver_now());
                }
                records.changes.call_ended(record.clone());
                if services.cdr.is_some() {
                    let mut linkages = std::mem::take(&mut records.settled);
                    linkages.extend(records.linkages.values().cloned());
                    linkages.sort_by_key(|l| l.requested_at);
                    records.detail = Some(crate::store::CallDetail {
                        call: record.clone(),
                        linkages,
                        // The CDR line does not carry them (the stats read them back).
                        conference_parties: Vec::new(),
                    });
                }
            }
            Action::Finished => finished = true,
            action => seen.push(action),
        }
    }
    commit(records, &services.store, &services.metrics).await;
    if let (Some(cdr), Some(detail)) = (&services.cdr, records.detail.take()) {
        // Committed: the file's line follows the store's record.
        cdr.write(detail);
    }
    for action in seen {
        match action {
            Action::SendRequest { request, target } => {
                services
                    .endpoint
                    .send_request(request, target, owner.clone())
            }
            Action::SendResponse { server, response } => {
                services.endpoint.send_response(server, response)
            }
            Action::RegisterDialog(key) => services.endpoint.register_dialog(key, owner.clone()),
            Action::UnregisterDialog(key) => services.endpoint.unregister_dialog(&key),
            Action::Media(command) => relay.command(command),
            Action::Bridged {
                caller_side,
                peer_side,
            } => services.directory.insert(caller_side, peer_side),
            Action::Unbridged(caller_side) => services.directory.remove(&caller_side),
            // Noted before the commit.
            Action::Attempt { .. }
            | Action::Ringing
            | Action::Hotkey { .. }
            | Action::Answered { .. }
            | Action::OpenParty { .. }
            | Action::CloseParty(_)
            | Action::Conference(_)
            | Action::Queue(_)
            | Action::Linkage(_)
            | Action::Ended(_)
            | Action::Finished => {}
        }
    }
    super::siprec::carry_out(records, owner, services);
    finished
}

/// Commits the step's record changes with its work-order events, waiting for the commit when
/// it holds events or the call's end (a held step, the disk being full, goes on: it lands
/// when the store recovers); then sends the results of the commands the step carried out.
async fn commit(records: &mut Records, store: &Store, metrics: &Metrics) {
    let mut changes = std::mem::take(&mut records.changes);
    records.link.take_events(&mut changes);
    if let Err(error) = store.write(changes).await {
        // A refused record is counted by the writer; a stopped writer counts nothing.
        if matches!(error, crate::store::StoreError::Closed) {
            metrics.increment(Counter::StoreWriteErrors);
        }
        tracing::error!(%error, "call records and events not written");
    }
    records.link.committed();
}

/// Keeps the queue's metrics: the calls waiting, and how each wait ended.
fn track_queue(queued: &mut bool, update: &QueueUpdate, metrics: &Metrics) {
    let (counter, waited) = match update {
        QueueUpdate::Queued { .. } => {
            *queued = true;
            metrics.add_gauge(Gauge::QueueWaiting, 1);
            metrics.increment(Counter::QueueCalls);
            return;
        }
        QueueUpdate::Offered { .. } => {
            metrics.increment(Counter::QueueOffers);
            return;
        }
        QueueUpdate::Answered { waited_ms } => (Counter::QueueAnswered, *waited_ms),
        QueueUpdate::Overflowed { waited_ms, .. } => (Counter::QueueOverflows, *waited_ms),
        QueueUpdate::Abandoned { waited_ms } => (Counter::QueueAbandons, *waited_ms),
        QueueUpdate::GaveUp { waited_ms } => (Counter::QueueGaveUp, *waited_ms),
    };
    metrics.increment(counter);
    // Each wait is summed once, at its end (an overflowed call waits on).
    if !matches!(update, QueueUpdate::Overflowed { .. }) {
        metrics.add(Counter::QueueWaitMilliseconds, waited);
        metrics.observe_queue_wait(waited);
    }
    // An overflowed call waits on (for the remote seats) until answered or given up.
    if *queued && !matches!(update, QueueUpdate::Overflowed { .. }) {
        *queued = false;
        metrics.add_gauge(Gauge::QueueWaiting, -1);
    }
}

/// Notes a conference's party records as they join and leave, and keeps the metrics.
fn track_conference(
    parties: &mut Vec<ConferencePartyRecord>,
    changes: &mut Changes,
    call: &CallRecord,
    update: ConferenceUpdate,
    metrics: &Metrics,
) {
    let now = unix_millis(SystemTime::now());
    let mut written = Vec::new();
    match update {
        ConferenceUpdate::Started => {
            metrics.increment(Counter::ConferencesStarted);
            metrics.add_gauge(Gauge::ConferencesActive, 1);
            tracing::info!("conference started");
        }
        ConferenceUpdate::Joined {
            party,
            peer,
            number,
        } => {
            let record = ConferencePartyRecord {
                call_id: call.id.clone(),
                party: party.index() as u8,
                peer,
                number,
                joined_at: now,
                left_at: None,
            };
            written.push(record.clone());
            parties.push(record);
        }
        ConferenceUpdate::Left { party } => {
            if let Some(position) = parties
                .iter()
                .position(|p| usize::from(p.party) == party.index())
            {
                let mut record = parties.remove(position);
                record.left_at = Some(now);
                written.push(record);
            }
        }
        ConferenceUpdate::Ended => {
            if parties.is_empty() {
                return;
            }
            metrics.add_gauge(Gauge::ConferencesActive, -1);
            if let Some(first) = parties.iter().map(|p| p.joined_at).min() {
                metrics.observe_conference(u64::try_from(now - first).unwrap_or(0));
            }
            tracing::info!("conference ended");
            for mut record in parties.drain(..) {
                record.left_at = Some(now);
                written.push(record);
            }
        }
    }
    for record in written {
        changes.conference_party(record);
    }
}

/// Applies a transfer's progress to its linkage record (and the metrics); returns the record
/// as it now stands.
fn track_linkage(
    linkages: &mut HashMap<String, LinkageRecord>,
    call: &CallRecord,
    update: LinkageUpdate,
    metrics: &Metrics,
) -> LinkageRecord {
    let now = unix_millis(SystemTime::now());
    let id = match &update {
        LinkageUpdate::Requested { linkage_id, .. }
        | LinkageUpdate::Retried { linkage_id, .. }
        | LinkageUpdate::Ringing { linkage_id }
        | LinkageUpdate::Answered { linkage_id }
        | LinkageUpdate::Failed { linkage_id, .. } => linkage_id.clone(),
    };
    let linkage = linkages.entry(id.clone()).or_insert_with(|| LinkageRecord {
        id,
        call_id: call.id.clone(),
        requested_at: now,
        ..LinkageRecord::default()
    });
    // Conference invitations have linkage records too, but the transfer metrics are transfers'.
    let transfer = !matches!(
        &update,
        LinkageUpdate::Requested {
            kind: crate::call::model::LinkageKind::Conference,
            ..
        }
    ) && linkage.kind != "conference";
    let count = |counter: Counter| {
        if transfer {
            metrics.increment(counter);
        }
    };
    match update {
        LinkageUpdate::Requested {
            kind,
            target,
            trigger,
            from_peer,
            from_platform,
            to_peer,
            to_platform,
            ..
        } => {
            count(Counter::TransfersRequested);
            linkage.target = target;
            linkage.kind = kind.as_str().to_string();
            linkage.trigger = trigger.as_str().to_string();
            linkage.from_peer = from_peer;
            linkage.from_platform = from_platform;
            linkage.to_peer = Some(to_peer);
            linkage.to_platform = to_platform;
        }
        LinkageUpdate::Retried {
            to_peer,
            to_platform,
            ..
        } => {
            linkage.to_peer = Some(to_peer);
            linkage.to_platform = to_platform;
        }
        LinkageUpdate::Ringing { .. } => {
            if linkage.ringing_at.is_none() {
                linkage.ringing_at = Some(now);
                count(Counter::TransfersRinging);
                if transfer {
                    metrics.add(
                        Counter::TransferRingingMilliseconds,
                        (now - linkage.requested_at).max(0) as u64,
                    );
                }
            }
        }
        LinkageUpdate::Answered { .. } => {
            count(Counter::TransfersAnswered);
            linkage.answered_at = Some(now);
            linkage.ended_at = Some(now);
            linkage.outcome = Some("answered".into());
            linkage.sip_status = Some(200);
        }
        LinkageUpdate::Failed { status, .. } => {
            count(Counter::TransfersFailed);
            linkage.ended_at = Some(now);
            linkage.outcome = Some("failed".into());
            linkage.sip_status = Some(status);
        }
    }
    let record = linkage.clone();
    if let (Some(_), Some(outcome)) = (record.ended_at, record.outcome.as_deref()) {
        let to = record
            .to_platform
            .as_deref()
            .or(record.to_peer.as_deref())
            .unwrap_or("-");
        let from = record.from_platform.as_deref().unwrap_or("-");
        let answered_after = record
            .answered_at
            .and_then(|answered| u64::try_from(answered - record.requested_at).ok());
        metrics.count_linkage((&record.kind, from, to), outcome, answered_after);
    }
    if record.ended_at.is_some() {
        // Settled: nothing more comes for it, and a call transferred again and again must not
        // keep every linkage it ever had.
        linkages.remove(&record.id);
    }
    record
}

/// The call's figures at the desk it was offered to (none for a call no desk was tried for).
fn count_desk_call(
    call: &Call,
    desk: Option<&str>,
    rang_ms: Option<u64>,
    record: &CallRecord,
    metrics: &Metrics,
) {
    let Some(desk) = desk else {
        return;
    };
    let platform = call.platform_of_peer(desk).unwrap_or_else(|| "-".into());
    let outcome = match record.answered_at {
        Some(answered) => DeskOutcome::Answered {
            after_ms: u64::try_from(answered - record.started_at).unwrap_or(0),
            rang_ms,
        },
        None if record.ended_by.as_deref() == Some("caller") => DeskOutcome::Abandoned {
            after_ms: record
                .ended_at
                .and_then(|ended| u64::try_from(ended - record.started_at).ok())
                .unwrap_or(0),
        },
        None => DeskOutcome::NotAnswered,
    };
    let route = call
        .route_name(&record.called, record.started_at)
        .unwrap_or_else(|| "-".into());
    metrics.count_desk_call((desk, &platform, &route), outcome);
}

/// Completes the record (committed with the step, before the call's last messages go out:
/// a call that has ended is on disk before anyone hears of it) and counts the call.
fn finish_record(
    record: &mut CallRecord,
    relay: &RelayHandle,
    outcome: &Outcome,
    metrics: &Metrics,
) {
    let stats = relay.stats();
    record.ended_at = Some(unix_millis(SystemTime::now()));
    record.ended_by = Some(outcome.ended_by.as_str().to_string());
    record.end_reason = Some(outcome.reason.clone());
    record.final_status = Some(outcome.final_status);
    record.rtp_a_to_b = stats.a_to_b.load(Ordering::Relaxed);
    record.rtp_b_to_a = stats.b_to_a.load(Ordering::Relaxed);
    record.rtp_dropped = stats.dropped.load(Ordering::Relaxed);
    if !outcome.answered {
        record.answered_at = None;
    }
    let result = if outcome.answered {
        CallResult::Answered
    } else if outcome.final_status == 487 && outcome.ended_by == EndedBy::Caller {
        CallResult::Cancelled
    } else if outcome.ended_by == EndedBy::Gateway || outcome.final_status >= 500 {
        CallResult::Failed
    } else {
        CallResult::Rejected
    };
    metrics.count_call(result);
    tracing::info!(
        ended_by = outcome.ended_by.as_str(),
        reason = %outcome.reason,
        status = outcome.final_status,
        rtp_a_to_b = record.rtp_a_to_b,
        rtp_b_to_a = record.rtp_b_to_a,
        "call ended"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::model::LinkageKind;
    use crate::call::transfer::Trigger;
    use crate::store::CallStart;

    /// A settled linkage leaves the call's table (its record is what was committed): a call
    /// transferred again and again holds only the linkage under way.
    #[test]
    fn settled_linkages_are_not_kept() {
        let mut linkages = HashMap::new();
        let call = CallRecord::started(CallStart {
            id: "c1",
            a_call_id: "a-c1",
            caller: "13800138000",
            called: "12345",
            a_peer: "carrier",
            started_at: 0,
        });
        let metrics = Metrics::new();
        for n in 0..50 {
            let linkage_id = format!("l{n}");
            let requested = LinkageUpdate::Requested {
                linkage_id: linkage_id.clone(),
                kind: LinkageKind::Transfer,
                target: "110".into(),
                trigger: Trigger::Refer,
                from_peer: "hotline".into(),
                from_platform: Some("12345".into()),
                to_peer: "police".into(),
                to_platform: Some("110".into()),
            };
            let _ = track_linkage(&mut linkages, &call, requested, &metrics);
            assert_eq!(linkages.len(), 1);
            let failed = LinkageUpdate::Failed {
                linkage_id,
                status: 486,
            };
            let record = track_linkage(&mut linkages, &call, failed, &metrics);
            assert_eq!(record.outcome.as_deref(), Some("failed"));
            assert_eq!(record.target, "110", "the record is whole");
        }
        assert!(linkages.is_empty());
    }
}
