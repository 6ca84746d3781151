//! The domain types of the work-order link to and from their protobuf messages.

use std::time::{Duration, SystemTime};

use prost_types::Timestamp;

use super::registry::{CallSnapshot, ErrorCode};
use super::{pb, CallEvent, EventKind, LegInfo, PartyInfo, RecordingInfo};
use crate::store::LinkageRecord;

/// `event` as the platforms get it, without its sequence and id (the store gives those).
pub fn event(event: &CallEvent) -> pb::Event {
    pb::Event {
        event_id: String::new(),
        sequence: 0,
        time: Some(timestamp(event.time)),
        r#type: event_type(event.kind) as i32,
        call_id: event.call_id.clone(),
        linkage_id: event.linkage_id.clone().unwrap_or_default(),
        citizen_number: event.citizen_number.clone(),
        called_number: event.called_number.clone(),
        caller_leg: Some(leg(&event.caller_leg)),
        called_leg: event.called_leg.as_ref().map(leg),
        agent: event.agent.as_ref().map(leg),
        target: event.target.as_ref().map(leg),
        sip_status: u32::from(event.sip_status),
        ticket: event.ticket.clone(),
        reply: event.reply.clone(),
        party: event.party.as_ref().map(party),
        hotkey: event.hotkey.clone().unwrap_or_default(),
        ended_by: event.ended_by.as_deref().map_or(0, |e| ended_by(e) as i32),
        reason: event.reason.clone().unwrap_or_default(),
        recording: event.recording.as_ref().map(recording),
        queue_wait_ms: event.queue_wait_ms.unwrap_or_default(),
    }
}

fn recording(recording: &RecordingInfo) -> pb::Recording {
    pb::Recording {
        recording_id: recording.id.clone(),
        path: recording.path.clone(),
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
        EventKind::PeerDown => T::PeerDown,
        EventKind::PeerUp => T::PeerUp,
        EventKind::Queued => T::Queued,
        EventKind::QueueOverflowed => T::QueueOverflowed,
        EventKind::QueueAbandoned => T::QueueAbandoned,
        EventKind::QueueOffered => T::QueueOffered,
    }
}

/// Who ended a call, from the record's word for it.
pub fn ended_by(word: &str) -> pb::EndedBy {
    match word {
        "caller" => pb::EndedBy::Caller,
        "callee" => pb::EndedBy::Callee,
        "gateway" => pb::EndedBy::Gateway,
        _ => pb::EndedBy::Unspecified,
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

/// A point in time as the proto has it.
pub fn timestamp(time: SystemTime) -> Timestamp {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// A record's Unix milliseconds as the proto has them.
pub fn timestamp_ms(unix_ms: i64) -> Timestamp {
    Timestamp {
        seconds: unix_ms.div_euclid(1000),
        nanos: (unix_ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A proto time in Unix milliseconds (0 for a time before 1970 or none).
pub fn unix_ms(time: Option<&Timestamp>) -> i64 {
    time.map_or(0, |t| {
        (t.seconds.saturating_mul(1000)).saturating_add(i64::from(t.nanos / 1_000_000))
    })
    .max(0)
}

/// A proto duration as a [`Duration`] (None for a negative or out-of-range one).
pub fn duration(duration: &prost_types::Duration) -> Option<Duration> {
    Duration::try_from(*duration).ok()
}

/// A [`Duration`] as the proto has it.
pub fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

pub fn error_code(code: ErrorCode) -> pb::ErrorCode {
    match code {
        ErrorCode::UnknownCall => pb::ErrorCode::UnknownCall,
        ErrorCode::NotAllowedNow => pb::ErrorCode::NotAllowedNow,
        ErrorCode::NotPermitted => pb::ErrorCode::NotPermitted,
        ErrorCode::NoRoute => pb::ErrorCode::NoRoute,
        ErrorCode::Invalid => pb::ErrorCode::Invalid,
        ErrorCode::Conflict => pb::ErrorCode::Conflict,
        ErrorCode::Unavailable => pb::ErrorCode::Unavailable,
    }
}

pub fn call(snapshot: &CallSnapshot) -> pb::Call {
    pb::Call {
        call_id: snapshot.call_id.clone(),
        citizen_number: snapshot.citizen_number.clone(),
        called_number: snapshot.called_number.clone(),
        caller_leg: Some(leg(&snapshot.caller_leg)),
        called_leg: snapshot.called_leg.as_ref().map(leg),
        started_at: Some(timestamp_ms(snapshot.started_at)),
        answered_at: snapshot.answered_at.map(timestamp_ms),
        ticket: snapshot.ticket.clone(),
        recording: snapshot.recording.as_ref().map(recording),
    }
}

pub fn linkage(record: &LinkageRecord) -> pb::Linkage {
    let kind = match record.kind.as_str() {
        "transfer" => pb::LinkageKind::Transfer,
        "conference" => pb::LinkageKind::Conference,
        _ => pb::LinkageKind::Unspecified,
    };
    let trigger = match record.trigger.as_str() {
        "refer" => pb::LinkageTrigger::Refer,
        "attended" => pb::LinkageTrigger::Attended,
        "hotkey" => pb::LinkageTrigger::Hotkey,
        "api" => pb::LinkageTrigger::Api,
        "fallback" => pb::LinkageTrigger::Fallback,
        _ => pb::LinkageTrigger::Unspecified,
    };
    let outcome = match record.outcome.as_deref() {
        None => pb::LinkageOutcome::Pending,
        Some("answered") => pb::LinkageOutcome::Answered,
        Some("failed") => pb::LinkageOutcome::Failed,
        Some(_) => pb::LinkageOutcome::Unspecified,
    };
    pb::Linkage {
        linkage_id: record.id.clone(),
        call_id: record.call_id.clone(),
        kind: kind as i32,
        trigger: trigger as i32,
        from_leg: Some(pb::Leg {
            peer: record.from_peer.clone(),
            platform: record.from_platform.clone().unwrap_or_default(),
            number: String::new(),
        }),
        to_leg: Some(pb::Leg {
            peer: record.to_peer.clone().unwrap_or_default(),
            platform: record.to_platform.clone().unwrap_or_default(),
            number: record.target.clone(),
        }),
        target: record.target.clone(),
        requested_at: Some(timestamp_ms(record.requested_at)),
        ringing_at: record.ringing_at.map(timestamp_ms),
        answered_at: record.answered_at.map(timestamp_ms),
        ended_at: record.ended_at.map(timestamp_ms),
        outcome: outcome as i32,
        sip_status: record.sip_status.map_or(0, u32::from),
        incident_number: record.incident_number.clone().unwrap_or_default(),
        disposition: record.disposition.clone().unwrap_or_default(),
        replied_at: record.replied_at.map(timestamp_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_go_both_ways() {
        for ms in [0, 999, 1_000, 1_795_305_600_123] {
            assert_eq!(unix_ms(Some(&timestamp_ms(ms))), ms);
        }
        let time = SystemTime::UNIX_EPOCH + Duration::new(1_795_305_600, 123_456_789);
        let t = timestamp(time);
        assert_eq!((t.seconds, t.nanos), (1_795_305_600, 123_456_789));
        assert_eq!(unix_ms(None), 0);
        let negative = prost_types::Duration {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(duration(&negative), None);
        assert_eq!(
            duration(&proto_duration(Duration::from_secs(90))),
            Some(Duration::from_secs(90))
        );
    }
}
