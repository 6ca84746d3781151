//! A call's side of the work-order link: what its actions mean to the platforms (events, made
//! ready by the [`EventHub`] and committed by the call's task with the step's records before
//! the step is seen), and the platforms' commands carried out on its call model (the same
//! operations as REFER and hotkeys: [`Call::transfer`], [`Call::conference`]), whose results
//! go back once the events they caused are committed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::call::hotkey::HotkeyAction;
use crate::call::model::{
    Call, ConferenceUpdate, LinkageUpdate, Outcome, QueueUpdate, TransferError,
};
use crate::call::transfer::Trigger;
use crate::media::recording::Recording;
use crate::media::Leg;
use crate::store::{CallRecord, Changes, LinkageRecord};
use crate::workorder::hub::EventHub;
use crate::workorder::registry::{
    changed, lock, CallCommand, CallRegistry, CallSnapshot, ChangeSignal, CommandDone,
    CommandError, CommandOutcome, CommandReply, ErrorCode, Linking,
};
use crate::workorder::{convert, CallEvent, EventKind, LegInfo, PartyInfo, RecordingInfo};

/// The call as the platforms know it, its events not yet committed, and the results of
/// commands that wait for them.
pub struct Link {
    /// The call as of this step; what the platforms may see of it (`published`) follows once
    /// the step is committed.
    state: CallSnapshot,
    published: Arc<Mutex<CallSnapshot>>,
    /// Bumped when what is published changes.
    changes: ChangeSignal,
    hub: Arc<EventHub>,
    offered: bool,
    /// Why screening flagged the call (a repeat caller), told with the offer.
    flag: Option<String>,
    events: Vec<CallEvent>,
    replies: Vec<(CommandReply, CommandOutcome)>,
    /// A queued call's wait, for the CALL_ANSWERED of the desk that took it.
    queue_wait_ms: Option<u64>,
    /// The transfer waiting in a queue, named on its queue events.
    queue_linkage: Option<String>,
}

impl Link {
    /// Enters the call in `registry`; returns the link and the call's command queue.
    pub fn open(
        record: &CallRecord,
        call: &Call,
        hub: Arc<EventHub>,
        registry: &CallRegistry,
        flag: Option<String>,
    ) -> (Link, mpsc::UnboundedReceiver<CallCommand>) {
        let platform = call.caller_platform();
        let state = CallSnapshot {
            call_id: record.id.clone(),
            citizen_number: record.caller.clone(),
            called_number: record.called.clone(),
            caller_leg: LegInfo {
                peer: record.a_peer.clone(),
                platform: platform.clone(),
                number: record.caller.clone(),
            },
            called_leg: None,
            started_at: record.started_at,
            answered_at: None,
            ticket: None,
            platforms: platform.into_iter().collect::<BTreeSet<_>>(),
            ..CallSnapshot::default()
        };
        let published = Arc::new(Mutex::new(state.clone()));
        let commands = registry.insert(Arc::clone(&published));
        (
            Link {
                state,
                published,
                changes: registry.changes(),
                hub,
                offered: false,
                flag,
                events: Vec::new(),
                replies: Vec::new(),
                queue_wait_ms: None,
                queue_linkage: None,
            },
            commands,
        )
    }

    pub fn call_id(&self) -> String {
        self.state.call_id.clone()
    }

    /// The events since the last time, ready for the outbox, into `changes`.
    pub fn take_events(&mut self, changes: &mut Changes) {
        for event in self.events.drain(..) {
            changes.events(self.hub.prepare(&event));
        }
    }

    /// The step is committed: the platforms may see the call as it now stands, and the
    /// results of the commands it carried out go.
    pub fn committed(&mut self) {
        let mut published = lock(&self.published);
        let change = *published != self.state;
        if change {
            *published = self.state.clone();
        }
        drop(published);
        if change {
            changed(&self.changes);
        }
        for (reply, outcome) in self.replies.drain(..) {
            let _ = reply.send(outcome);
        }
    }

    /// An event of `kind` for every platform the call involves, with its legs as they stand.
    fn event(&self, kind: EventKind) -> CallEvent {
        let snapshot = &self.state;
        let mut event = CallEvent::new(kind, &snapshot.call_id, SystemTime::now());
        event.platforms = snapshot.platforms.iter().cloned().collect();
        event.citizen_number = snapshot.citizen_number.clone();
        event.called_number = snapshot.called_number.clone();
        event.caller_leg = snapshot.caller_leg.clone();
        event.called_leg = snapshot.called_leg.clone();
        event.recording = snapshot.recording.clone();
        event
    }

    /// The call is recorded from now on: its events and `GetCall` say where.
    pub fn recorded(&mut self, recording: RecordingInfo) {
        self.state.recording = Some(recording);
    }

    /// The number of the call's ticket (工单号), once a platform attached one.
    pub fn ticket_number(&self) -> Option<&str> {
        self.state.ticket.as_ref().map(|t| t.number.as_str())
    }

    /// The platforms the call involves as of this step.
    pub fn platforms(&self) -> Vec<String> {
        self.state.platforms.iter().cloned().collect()
    }

    fn emit(&mut self, event: CallEvent) {
        self.events.push(event);
    }

    fn involve(&mut self, platform: Option<&String>) {
        if let Some(platform) = platform {
            self.state.platforms.insert(platform.clone());
        }
    }

    /// Leg B is tried at `peer` (the first attempt is the call being offered).
    pub fn attempt(&mut self, peer: &str, platform: Option<String>) {
        {
            let snapshot = &mut self.state;
            let number = snapshot
                .called_leg
                .as_ref()
                .map_or_else(|| snapshot.called_number.clone(), |b| b.number.clone());
            if let Some(platform) = &platform {
                snapshot.platforms.insert(platform.clone());
            }
            snapshot.called_leg = Some(LegInfo {
                peer: peer.to_string(),
                platform,
                number,
            });
            // This desk has not rung yet.
            snapshot.ringing = false;
        }
        if !std::mem::replace(&mut self.offered, true) {
            self.emit(self.event(EventKind::CallOffered));
            if let Some(reason) = self.flag.take() {
                let mut event = self.event(EventKind::CallFlagged);
                event.reason = Some(reason);
                self.emit(event);
            }
        }
    }

    pub fn ringing(&mut self) {
        self.state.ringing = true;
        self.emit(self.event(EventKind::CallRinging));
    }

    /// The call was answered at `at` (Unix ms).
    pub fn answered(&mut self, at: i64) {
        self.state.answered_at = Some(at);
        let mut event = self.event(EventKind::CallAnswered);
        event.queue_wait_ms = self.queue_wait_ms.take();
        self.emit(event);
    }

    /// The route's queue took, moved or lost the call.
    pub fn queue(&mut self, update: &QueueUpdate) {
        self.show_queue(update);
        let event = match update {
            QueueUpdate::Queued { status, linkage_id } => {
                self.queue_linkage = linkage_id.clone();
                let mut event = self.event(EventKind::Queued);
                event.sip_status = *status;
                event
            }
            // Told with the CALL_ANSWERED (TRANSFER_ANSWERED) that follows.
            QueueUpdate::Answered { waited_ms } => {
                self.queue_wait_ms = Some(*waited_ms);
                return;
            }
            QueueUpdate::Offered { to_peer, waited_ms } => {
                let mut event = self.event(EventKind::QueueOffered);
                event.queue_wait_ms = Some(*waited_ms);
                event.target = Some(LegInfo {
                    peer: to_peer.clone(),
                    ..LegInfo::default()
                });
                event
            }
            QueueUpdate::Overflowed { to_peer, waited_ms } => {
                let mut event = self.event(EventKind::QueueOverflowed);
                event.queue_wait_ms = Some(*waited_ms);
                event.target = Some(LegInfo {
                    peer: to_peer.clone(),
                    ..LegInfo::default()
                });
                event
            }
            QueueUpdate::Abandoned { waited_ms } => {
                let mut event = self.event(EventKind::QueueAbandoned);
                event.queue_wait_ms = Some(*waited_ms);
                event
            }
            // CALL_ENDED (TRANSFER_FAILED) says it.
            QueueUpdate::GaveUp { .. } => {
                self.queue_linkage = None;
                return;
            }
        };
        let mut event = event;
        // A transfer's wait: its linkage.
        event.linkage_id = self.queue_linkage.clone();
        if matches!(update, QueueUpdate::Abandoned { .. }) {
            self.queue_linkage = None;
        }
        self.emit(event);
    }

    /// What the status page shows of a wait in the queue: the call's, or its transfer's.
    fn show_queue(&mut self, update: &QueueUpdate) {
        let of_linkage = match update {
            QueueUpdate::Queued { linkage_id, .. } => linkage_id.is_some(),
            _ => self.queue_linkage.is_some(),
        };
        // Offered again to a desk, it still waits (the desk may turn it away once more).
        if !of_linkage {
            self.state.queued_since = match update {
                QueueUpdate::Queued { .. } | QueueUpdate::Offered { .. } => {
                    self.state.queued_since.or(Some(unix_now()))
                }
                _ => None,
            };
        } else if let Some(linking) = self.state.linking.as_mut() {
            match update {
                QueueUpdate::Queued { .. } => linking.state = "queued",
                // To the overflow peers: asked anew, until one rings.
                QueueUpdate::Overflowed { .. } => linking.state = "requested",
                _ => {}
            }
        }
    }

    /// A transfer's or conference guest's linkage moved on (`linkage` as it now stands).
    pub fn linkage(&mut self, update: &LinkageUpdate, linkage: &LinkageRecord) {
        self.state.linking = match update {
            LinkageUpdate::Answered { .. } | LinkageUpdate::Failed { .. } => None,
            LinkageUpdate::Ringing { .. } => self.state.linking.take().map(|mut linking| {
                linking.state = "ringing";
                linking
            }),
            LinkageUpdate::Requested { .. } | LinkageUpdate::Retried { .. } => Some(Linking {
                linkage_id: linkage.id.clone(),
                kind: linkage.kind.clone(),
                target: linkage.target.clone(),
                to_platform: linkage.to_platform.clone(),
                state: "requested",
                requested_at: linkage.requested_at,
            }),
        };
        let conference = linkage.kind == "conference";
        let kind = match update {
            LinkageUpdate::Requested { .. } if conference => EventKind::ConferenceRequested,
            LinkageUpdate::Requested { .. } => EventKind::TransferRequested,
            LinkageUpdate::Retried { .. } => return,
            LinkageUpdate::Ringing { .. } => EventKind::TransferRinging,
            LinkageUpdate::Answered { .. } => EventKind::TransferAnswered,
            LinkageUpdate::Failed { .. } => EventKind::TransferFailed,
        };
        // The receiving platform learns of the call (and its ticket) before its phone rings.
        self.involve(linkage.to_platform.as_ref());
        let target = LegInfo {
            peer: linkage.to_peer.clone().unwrap_or_default(),
            platform: linkage.to_platform.clone(),
            number: linkage.target.clone(),
        };
        if kind == EventKind::TransferAnswered && !conference {
            self.state.called_leg = Some(target.clone());
        }
        let mut event = self.event(kind);
        if kind == EventKind::TransferAnswered {
            // A transfer's or guest's wait in a queue ends with its answer.
            event.queue_wait_ms = self.queue_wait_ms.take();
            self.queue_linkage = None;
        }
        event.linkage_id = Some(linkage.id.clone());
        event.agent = Some(LegInfo {
            peer: linkage.from_peer.clone(),
            platform: linkage.from_platform.clone(),
            number: String::new(),
        });
        event.target = Some(target);
        event.sip_status = linkage.sip_status.unwrap_or_default();
        if matches!(
            kind,
            EventKind::TransferRequested | EventKind::ConferenceRequested
        ) {
            event.ticket = self.state.ticket.clone();
        }
        self.emit(event);
    }

    pub fn conference(&mut self, update: &ConferenceUpdate) {
        match update {
            ConferenceUpdate::Started => self.state.conference_since = Some(unix_now()),
            ConferenceUpdate::Ended => self.state.conference_since = None,
            _ => {}
        }
        let event = match update {
            ConferenceUpdate::Started => self.event(EventKind::ConferenceStarted),
            ConferenceUpdate::Ended => self.event(EventKind::ConferenceEnded),
            ConferenceUpdate::Joined {
                party,
                peer,
                number,
            } => {
                let mut event = self.event(EventKind::PartyJoined);
                event.party = Some(PartyInfo {
                    party: party.index() as u8,
                    peer: peer.clone(),
                    number: number.clone(),
                });
                event
            }
            ConferenceUpdate::Left { party } => {
                let mut event = self.event(EventKind::PartyLeft);
                event.party = Some(PartyInfo {
                    party: party.index() as u8,
                    ..PartyInfo::default()
                });
                event
            }
        };
        self.emit(event);
    }

    pub fn hotkey(&mut self, dtmf: &str, action: HotkeyAction, target: &str) {
        let mut event = self.event(EventKind::HotkeyPressed);
        let action = match action {
            HotkeyAction::Transfer => "transfer",
            HotkeyAction::Conference => "conference",
        };
        event.hotkey = Some(format!("{dtmf} {action} {target}"));
        self.emit(event);
    }

    pub fn ended(&mut self, outcome: &Outcome) {
        let mut event = self.event(EventKind::CallEnded);
        event.sip_status = outcome.final_status;
        event.ended_by = Some(outcome.ended_by.as_str().to_string());
        event.reason = Some(outcome.reason.clone());
        self.emit(event);
    }

    /// Attaches (or updates) the call's ticket: the gateway's version goes up by one; an update
    /// based on another version than the current one (0: none attached) is refused.
    fn attach_ticket(
        &mut self,
        platform: &str,
        mut ticket: crate::workorder::Ticket,
        base_version: Option<u64>,
    ) -> CommandOutcome {
        let current = self.state.ticket.as_ref().map_or(0, |t| t.version);
        if let Some(base) = base_version.filter(|base| *base != current) {
            return Err(CommandError::new(
                ErrorCode::Conflict,
                format!("the ticket is at version {current}, not {base}"),
            ));
        }
        ticket.version = current + 1;
        ticket.updated_by = platform.to_string();
        ticket.updated_at = Some(convert::timestamp(SystemTime::now()));
        tracing::info!(%platform, ticket = %ticket.number, version = ticket.version, "ticket attached");
        let kind = if current > 0 {
            EventKind::TicketUpdated
        } else {
            EventKind::TicketAttached
        };
        let version = ticket.version;
        self.state.ticket = Some(ticket.clone());
        let mut event = self.event(kind);
        event.ticket = Some(ticket);
        self.emit(event);
        Ok(CommandDone {
            ticket_version: version,
        })
    }

    /// Carries a platform's command out on the call; its result goes with the next commit.
    pub fn command(
        &mut self,
        call: &mut Call,
        recording: Option<&mut Recording>,
        command: CallCommand,
    ) {
        let now = super::driver::driver_now();
        let done = |result: Result<(), TransferError>| {
            result.map(|()| CommandDone::default()).map_err(refused)
        };
        let (reply, outcome) = match command {
            CallCommand::AttachTicket {
                platform,
                ticket,
                base_version,
                reply,
            } => {
                let class = urgency_class(ticket.urgency);
                let outcome = self.attach_ticket(&platform, *ticket, base_version);
                if outcome.is_ok() {
                    call.set_urgency(class);
                }
                (reply, outcome)
            }
            CallCommand::Transfer {
                platform,
                target,
                reply,
            } => {
                let leg = call.leg_of_platform(&platform).unwrap_or(Leg::B);
                (reply, done(call.transfer(now, leg, &target, Trigger::Api)))
            }
            CallCommand::Conference {
                platform,
                target,
                reply,
            } => {
                let leg = call.leg_of_platform(&platform).unwrap_or(Leg::B);
                (
                    reply,
                    done(call.conference(now, leg, &target, Trigger::Api)),
                )
            }
            CallCommand::HangUp {
                platform,
                party,
                reply,
            } => {
                tracing::info!(%platform, ?party, "hung up by a platform");
                let result = match party {
                    None => {
                        call.hang_up_all(now);
                        Ok(CommandDone::default())
                    }
                    Some(party) => call
                        .hang_up_party(now, party)
                        .map(|()| CommandDone::default())
                        .map_err(|_| no_party(party)),
                };
                (reply, result)
            }
            CallCommand::Mute {
                party,
                muted,
                reply,
            } => {
                let result = call
                    .mute(party, muted)
                    .map(|()| CommandDone::default())
                    .map_err(|_| no_party(party));
                (reply, result)
            }
            CallCommand::Recording {
                platform,
                paused,
                reply,
            } => {
                let result = match recording {
                    Some(recording) => {
                        if recording.pause(now, paused, &platform) {
                            tracing::info!(%platform, paused, "recording paused or resumed");
                        }
                        Ok(CommandDone::default())
                    }
                    None => Err(CommandError::new(
                        ErrorCode::NotAllowedNow,
                        "the call is not recorded",
                    )),
                };
                (reply, result)
            }
        };
        self.replies.push((reply, outcome));
    }
}

fn unix_now() -> i64 {
    crate::store::unix_millis(SystemTime::now())
}

fn no_party(party: u32) -> CommandError {
    CommandError::new(
        ErrorCode::NotAllowedNow,
        format!("no party {party} in the call"),
    )
}

fn refused(error: TransferError) -> CommandError {
    let code = match error {
        TransferError::NoRoute(_) => ErrorCode::NoRoute,
        TransferError::PeersDown(_) => ErrorCode::Unavailable,
        TransferError::NotAnswered
        | TransferError::InProgress
        | TransferError::Conference
        | TransferError::ConferenceFull(_) => ErrorCode::NotAllowedNow,
    };
    CommandError::new(code, error.to_string())
}

/// The ticket's urgency (the proto's enum value) as the call model's class.
fn urgency_class(urgency: i32) -> Option<crate::call::model::UrgencyClass> {
    use crate::call::model::UrgencyClass;
    use crate::workorder::pb::Urgency;
    match Urgency::try_from(urgency).ok()? {
        Urgency::DUrgent => Some(UrgencyClass::D),
        Urgency::AImmediate => Some(UrgencyClass::A),
        Urgency::BFiveWorkingDays => Some(UrgencyClass::B),
        Urgency::CPlanned => Some(UrgencyClass::C),
        Urgency::Unspecified => None,
    }
}
