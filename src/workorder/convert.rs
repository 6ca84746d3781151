//! The domain types of the work-order link to and from their protobuf messages.

use super::registry::{CallSnapshot, ErrorCode};
use super::{pb, CallEvent, Category, EventKind, LegInfo, PartyInfo, Reply, Ticket};
use crate::store::LinkageRecord;

pub fn event(event: &CallEvent, sequence: u64, event_id: &str) -> pb::Event {
    pb::Event {
        event_id: event_id.to_string(),
        sequence,
        time: event.time,
        r#type: event_type(event.kind) as i32,
        call_id: event.call_id.clone(),
        linkage_id: event.linkage_id.clone().unwrap_or_default(),
        citizen_number: event.citizen_number.clone(),
        called_number: event.called_number.clone(),
        a: Some(leg(&event.a)),
        b: event.b.as_ref().map(leg),
        agent: event.agent.as_ref().map(leg),
        target: event.target.as_ref().map(leg),
        sip_status: u32::from(event.sip_status),
        ticket: event.ticket.as_ref().map(ticket),
        reply: event.reply.as_ref().map(reply),
        party: event.party.as_ref().map(party),
        hotkey: event.hotkey.clone().unwrap_or_default(),
        ended_by: event.ended_by.clone().unwrap_or_default(),
        reason: event.reason.clone().unwrap_or_default(),
    }
}

fn event_type(kind: EventKind) -> pb::EventType {
    use pb::EventType as T;
    match kind {
        EventKind::CallOffered => T::CallOffered,
        EventKind::CallRinging => T::CallRinging,
        EventKind::CallAnswered => T::CallAnswered,
        EventKind::CallEnded => T::CallEnded,
        EventKind::TransferRequested => T::TransferRequested,
        EventKind::TransferRinging => T::TransferRinging,
        EventKind::TransferAnswered => T::TransferAnswered,
        EventKind::TransferFailed => T::TransferFailed,
        EventKind::ConferenceRequested => T::ConferenceRequested,
        EventKind::ConferenceStarted => T::ConferenceStarted,
        EventKind::ConferenceEnded => T::ConferenceEnded,
        EventKind::PartyJoined => T::PartyJoined,
        EventKind::PartyLeft => T::PartyLeft,
        EventKind::HotkeyPressed => T::HotkeyPressed,
        EventKind::TicketAttached => T::TicketAttached,
        EventKind::TicketUpdated => T::TicketUpdated,
        EventKind::PeerReply => T::PeerReply,
        EventKind::CallBlocked => T::CallBlocked,
        EventKind::CallFlagged => T::CallFlagged,
    }
}

pub fn leg(leg: &LegInfo) -> pb::Leg {
    pb::Leg {
        peer: leg.peer.clone(),
        platform: leg.platform.clone().unwrap_or_default(),
        number: leg.number.clone(),
    }
}

fn party(party: &PartyInfo) -> pb::Party {
    pb::Party {
        party: u32::from(party.party),
        peer: party.peer.clone(),
        number: party.number.clone(),
    }
}

pub fn ticket(ticket: &Ticket) -> pb::Ticket {
    let category = match ticket.category {
        Category::Unspecified => pb::Category::Unspecified,
        Category::A => pb::Category::A,
        Category::B => pb::Category::B,
        Category::C => pb::Category::C,
        Category::D => pb::Category::D,
    };
    pb::Ticket {
        number: ticket.number.clone(),
        category: category as i32,
        summary: ticket.summary.clone(),
        address: ticket.address.clone(),
        deadline: ticket.deadline,
        fields: ticket.fields.clone().into_iter().collect(),
    }
}

pub fn ticket_from(ticket: pb::Ticket) -> Ticket {
    let category = match pb::Category::try_from(ticket.category) {
        Ok(pb::Category::A) => Category::A,
        Ok(pb::Category::B) => Category::B,
        Ok(pb::Category::C) => Category::C,
        Ok(pb::Category::D) => Category::D,
        _ => Category::Unspecified,
    };
    Ticket {
        number: ticket.number,
        category,
        summary: ticket.summary,
        address: ticket.address,
        deadline: ticket.deadline,
        fields: ticket.fields.into_iter().collect(),
    }
}

fn reply(reply: &Reply) -> pb::Reply {
    pb::Reply {
        linkage_id: reply.linkage_id.clone(),
        incident_number: reply.incident_number.clone(),
        disposition: reply.disposition.clone(),
        fields: reply.fields.clone().into_iter().collect(),
    }
}

pub fn reply_from(reply: pb::Reply) -> Reply {
    Reply {
        linkage_id: reply.linkage_id,
        incident_number: reply.incident_number,
        disposition: reply.disposition,
        fields: reply.fields.into_iter().collect(),
    }
}

pub fn error_code(code: ErrorCode) -> pb::ErrorCode {
    match code {
        ErrorCode::UnknownCall => pb::ErrorCode::UnknownCall,
        ErrorCode::NotAllowedNow => pb::ErrorCode::NotAllowedNow,
        ErrorCode::NotPermitted => pb::ErrorCode::NotPermitted,
        ErrorCode::NoRoute => pb::ErrorCode::NoRoute,
        ErrorCode::Invalid => pb::ErrorCode::Invalid,
    }
}

pub fn call(snapshot: &CallSnapshot) -> pb::CallInfo {
    pb::CallInfo {
        call_id: snapshot.call_id.clone(),
        citizen_number: snapshot.citizen_number.clone(),
        called_number: snapshot.called_number.clone(),
        a: Some(leg(&snapshot.a)),
        b: snapshot.b.as_ref().map(leg),
        answered: snapshot.answered,
        started_at: snapshot.started_at,
        ticket: snapshot.ticket.as_ref().map(ticket),
    }
}

pub fn linkage(record: &LinkageRecord) -> pb::LinkageInfo {
    pb::LinkageInfo {
        linkage_id: record.id.clone(),
        call_id: record.call_id.clone(),
        kind: record.kind.clone(),
        trigger: record.trigger.clone(),
        from: Some(pb::Leg {
            peer: record.from_peer.clone(),
            platform: record.from_platform.clone().unwrap_or_default(),
            number: String::new(),
        }),
        to: Some(pb::Leg {
            peer: record.to_peer.clone().unwrap_or_default(),
            platform: record.to_platform.clone().unwrap_or_default(),
            number: record.target.clone(),
        }),
        target: record.target.clone(),
        requested_at: record.requested_at,
        ringing_at: record.ringing_at.unwrap_or_default(),
        answered_at: record.answered_at.unwrap_or_default(),
        ended_at: record.ended_at.unwrap_or_default(),
        outcome: record.outcome.clone().unwrap_or_default(),
        sip_status: record.sip_status.map_or(0, u32::from),
    }
}
