//! A call's side of the work-order link: what its actions mean to the platforms (events for
//! the [`EventHub`]), and the platforms' commands carried out on its call model (the same
//! operations as REFER and hotkeys: [`Call::transfer`], [`Call::conference`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;

use super::model::{Call, ConferenceUpdate, LinkageUpdate, Outcome, TransferError};
use super::transfer::Trigger;
use crate::config::HotkeyAction;
use crate::media::Leg;
use crate::store::{unix_millis, CallRecord, LinkageRecord};
use crate::workorder::hub::EventHub;
use crate::workorder::registry::{
    lock, CallCommand, CallRegistry, CallSnapshot, CommandError, ErrorCode,
};
use crate::workorder::{CallEvent, EventKind, LegInfo, PartyInfo};

/// The call as the platforms know it, and where its events go.
pub struct Link {
    snapshot: Arc<Mutex<CallSnapshot>>,
    hub: Arc<EventHub>,
    offered: bool,
    /// Why screening flagged the call (a repeat caller), told with the offer.
    flag: Option<String>,
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
        let snapshot = Arc::new(Mutex::new(CallSnapshot {
            call_id: record.id.clone(),
            citizen_number: record.caller.clone(),
            called_number: record.called.clone(),
            a: LegInfo {
                peer: record.a_peer.clone(),
                platform: platform.clone(),
                number: record.caller.clone(),
            },
            b: None,
            answered: false,
            started_at: record.started_at,
            ticket: None,
            platforms: platform.into_iter().collect::<BTreeSet<_>>(),
        }));
        let commands = registry.insert(Arc::clone(&snapshot));
        (
            Link {
                snapshot,
                hub,
                offered: false,
                flag,
            },
            commands,
        )
    }

    pub fn call_id(&self) -> String {
        lock(&self.snapshot).call_id.clone()
    }

    /// An event of `kind` for every platform the call involves, with its legs as they stand.
    fn event(&self, kind: EventKind) -> CallEvent {
        let snapshot = lock(&self.snapshot);
        let mut event = CallEvent::new(kind, &snapshot.call_id, unix_millis(SystemTime::now()));
        event.platforms = snapshot.platforms.iter().cloned().collect();
        event.citizen_number = snapshot.citizen_number.clone();
        event.called_number = snapshot.called_number.clone();
        event.a = snapshot.a.clone();
        event.b = snapshot.b.clone();
        event
    }

    fn involve(&self, platform: Option<&String>) {
        if let Some(platform) = platform {
            lock(&self.snapshot).platforms.insert(platform.clone());
        }
    }

    /// Leg B is tried at `peer` (the first attempt is the call being offered).
    pub fn attempt(&mut self, peer: &str, platform: Option<String>) {
        {
            let mut snapshot = lock(&self.snapshot);
            let number = snapshot
                .b
                .as_ref()
                .map_or_else(|| snapshot.called_number.clone(), |b| b.number.clone());
            if let Some(platform) = &platform {
                snapshot.platforms.insert(platform.clone());
            }
            snapshot.b = Some(LegInfo {
                peer: peer.to_string(),
                platform,
                number,
            });
        }
        if !std::mem::replace(&mut self.offered, true) {
            self.hub.emit(self.event(EventKind::CallOffered));
            if let Some(reason) = self.flag.take() {
                let mut event = self.event(EventKind::CallFlagged);
                event.reason = Some(reason);
                self.hub.emit(event);
            }
        }
    }

    pub fn ringing(&self) {
        self.hub.emit(self.event(EventKind::CallRinging));
    }

    pub fn answered(&self) {
        lock(&self.snapshot).answered = true;
        self.hub.emit(self.event(EventKind::CallAnswered));
    }

    /// A transfer's or conference guest's linkage moved on (`linkage` as it now stands).
    pub fn linkage(&self, update: &LinkageUpdate, linkage: &LinkageRecord) {
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
            lock(&self.snapshot).b = Some(target.clone());
        }
        let mut event = self.event(kind);
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
            event.ticket = lock(&self.snapshot).ticket.clone();
        }
        self.hub.emit(event);
    }

    pub fn conference(&self, update: &ConferenceUpdate) {
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
        self.hub.emit(event);
    }

    pub fn hotkey(&self, dtmf: &str, action: HotkeyAction, target: &str) {
        let mut event = self.event(EventKind::HotkeyPressed);
        let action = match action {
            HotkeyAction::Transfer => "transfer",
            HotkeyAction::Conference => "conference",
        };
        event.hotkey = Some(format!("{dtmf} {action} {target}"));
        self.hub.emit(event);
    }

    pub fn ended(&self, outcome: &Outcome) {
        let mut event = self.event(EventKind::CallEnded);
        event.sip_status = outcome.final_status;
        event.ended_by = Some(outcome.ended_by.as_str().to_string());
        event.reason = Some(outcome.reason.clone());
        self.hub.emit(event);
    }

    /// Carries a platform's command out on the call.
    pub fn command(&self, call: &mut Call, command: CallCommand) {
        let now = Instant::now();
        match command {
            CallCommand::AttachTicket {
                platform,
                ticket,
                reply,
            } => {
                let updated = lock(&self.snapshot)
                    .ticket
                    .replace(ticket.clone())
                    .is_some();
                tracing::info!(%platform, ticket = %ticket.number, updated, "ticket attached");
                let kind = if updated {
                    EventKind::TicketUpdated
                } else {
                    EventKind::TicketAttached
                };
                let mut event = self.event(kind);
                event.ticket = Some(ticket);
                self.hub.emit(event);
                let _ = reply.send(Ok(()));
            }
            CallCommand::Transfer {
                platform,
                target,
                reply,
            } => {
                let leg = call.leg_of_platform(&platform).unwrap_or(Leg::B);
                let result = call.transfer(now, leg, &target, Trigger::Api);
                let _ = reply.send(result.map_err(refused));
            }
            CallCommand::Conference {
                platform,
                target,
                reply,
            } => {
                let leg = call.leg_of_platform(&platform).unwrap_or(Leg::B);
                let result = call.conference(now, leg, &target, Trigger::Api);
                let _ = reply.send(result.map_err(refused));
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
                        Ok(())
                    }
                    Some(party) => call.hang_up_party(now, party).map_err(|_| {
                        CommandError::new(
                            ErrorCode::NotAllowedNow,
                            format!("no party {party} in the call"),
                        )
                    }),
                };
                let _ = reply.send(result);
            }
            CallCommand::Mute {
                party,
                muted,
                reply,
            } => {
                let result = call.mute(party, muted).map_err(|_| {
                    CommandError::new(
                        ErrorCode::NotAllowedNow,
                        format!("no party {party} in the call"),
                    )
                });
                let _ = reply.send(result);
            }
        }
    }
}

fn refused(error: TransferError) -> CommandError {
    let code = match error {
        TransferError::NoRoute(_) => ErrorCode::NoRoute,
        TransferError::NotAnswered
        | TransferError::InProgress
        | TransferError::Conference
        | TransferError::ConferenceFull(_) => ErrorCode::NotAllowedNow,
    };
    CommandError::new(code, error.to_string())
}
