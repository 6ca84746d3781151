//! The ending events of what a killed run left open, made when the store opens: so a call a
//! platform was shown never stays on its screen. For each platform that saw the call, in
//! order: `TRANSFER_FAILED` for each linkage still under way, `CONFERENCE_ENDED` if parties
//! were still in a conference (it ends every party still in, as when a live call ends in a
//! conference), and last `CALL_ENDED` (ended by the gateway, "gateway restart"); the legs and
//! numbers as that platform last saw them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use prost::Message;

use super::{convert, pb};
use crate::ids::IdGenerator;
use crate::store::{Interrupted, NewEvent, Recovery};

/// What the end of a killed run is called on the link (a node of a cluster whose lease
/// expired is "node lost": [`crate::store::NODE_LOST`]).
pub const REASON: &str = "gateway restart";

/// The store's recovery for the work-order link, for the configured `platforms` (as the hub
/// keeps events only for them), drawing event ids from `ids`.
pub fn recovery(ids: IdGenerator, platforms: HashSet<String>) -> Arc<Recovery> {
    let ids = Mutex::new(ids);
    Arc::new(move |call: &Interrupted, now: i64| {
        let mut events = ending_events(
            call,
            now,
            &mut ids.lock().unwrap_or_else(PoisonError::into_inner),
        );
        events.retain(|e| platforms.contains(&e.platform));
        events
    })
}

fn ending_events(call: &Interrupted, now: i64, ids: &mut IdGenerator) -> Vec<NewEvent> {
    let mut endings: Vec<pb::Event> = Vec::new();
    for linkage in &call.linkages {
        endings.push(pb::Event {
            r#type: pb::EventType::TransferFailed as i32,
            linkage_id: linkage.id.clone(),
            agent: Some(pb::Leg {
                peer: linkage.from_peer.clone(),
                platform: linkage.from_platform.clone().unwrap_or_default(),
                number: String::new(),
            }),
            target: Some(pb::Leg {
                peer: linkage.to_peer.clone().unwrap_or_default(),
                platform: linkage.to_platform.clone().unwrap_or_default(),
                number: linkage.target.clone(),
            }),
            sip_status: 503,
            reason: call.reason.clone(),
            ..pb::Event::default()
        });
    }
    if !call.parties.is_empty() {
        endings.push(pb::Event {
            r#type: pb::EventType::ConferenceEnded as i32,
            ..pb::Event::default()
        });
    }
    endings.push(pb::Event {
        r#type: pb::EventType::CallEnded as i32,
        sip_status: if call.call.answered_at.is_some() {
            200
        } else {
            503
        },
        ended_by: pb::EndedBy::Gateway as i32,
        reason: call.reason.clone(),
        ..pb::Event::default()
    });
    let event_ids: Vec<String> = endings
        .iter()
        .map(|_| format!("{:016x}{:016x}", ids.next_u64(), ids.next_u64()))
        .collect();
    let mut events = Vec::new();
    for (platform, newest) in &call.seen {
        let base = as_seen(call, newest);
        for (ending, event_id) in endings.iter().zip(&event_ids) {
            let event = pb::Event {
                time: Some(convert::timestamp_ms(now)),
                call_id: call.call.id.clone(),
                citizen_number: base.citizen_number.clone(),
                called_number: base.called_number.clone(),
                caller_leg: base.caller_leg.clone(),
                called_leg: base.called_leg.clone(),
                ..ending.clone()
            };
            events.push(NewEvent {
                platform: platform.clone(),
                event_id: event_id.clone(),
                call_id: call.call.id.clone(),
                created_at: now,
                body: event.encode_to_vec().into(),
            });
        }
    }
    events
}

/// The call as the platform last saw it (from the call's record if that event cannot be read,
/// or is an upgrade's empty marker).
fn as_seen(call: &Interrupted, newest: &[u8]) -> pb::Event {
    let seen = pb::Event::decode(newest)
        .ok()
        .filter(|event| !event.call_id.is_empty());
    seen.unwrap_or_else(|| pb::Event {
        citizen_number: call.call.caller.clone(),
        called_number: call.call.called.clone(),
        caller_leg: Some(pb::Leg {
            peer: call.call.a_peer.clone(),
            platform: String::new(),
            number: call.call.caller.clone(),
        }),
        called_leg: call.call.b_peer.as_ref().map(|peer| pb::Leg {
            peer: peer.clone(),
            platform: String::new(),
            number: call.call.called.clone(),
        }),
        ..pb::Event::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CallRecord, CallStart, ConferencePartyRecord, LinkageRecord};

    fn decode(event: &NewEvent) -> pb::Event {
        pb::Event::decode(&*event.body).unwrap_or_default()
    }

    #[test]
    fn every_platform_that_saw_the_call_gets_its_ending_in_order() {
        let seen = pb::Event {
            call_id: "c1".into(),
            citizen_number: "13800138000".into(),
            called_number: "12345".into(),
            called_leg: Some(pb::Leg {
                peer: "hotline".into(),
                platform: "12345".into(),
                number: "12345".into(),
            }),
            ticket: Some(pb::Ticket::default()),
            ..pb::Event::default()
        };
        let call = Interrupted {
            call: CallRecord {
                b_peer: Some("hotline".into()),
                answered_at: Some(2),
                ..CallRecord::started(CallStart {
                    id: "c1",
                    a_call_id: "a",
                    caller: "13800138000",
                    called: "12345",
                    a_peer: "carrier",
                    started_at: 1,
                })
            },
            linkages: vec![LinkageRecord {
                id: "l1".into(),
                call_id: "c1".into(),
                target: "110".into(),
                to_platform: Some("110".into()),
                ..LinkageRecord::default()
            }],
            parties: vec![ConferencePartyRecord {
                call_id: "c1".into(),
                party: 2,
                peer: "police".into(),
                number: "110".into(),
                joined_at: 3,
                left_at: None,
            }],
            seen: vec![
                ("110".into(), seen.encode_to_vec()),
                ("12345".into(), b"not protobuf".to_vec()),
            ],
            reason: REASON.into(),
        };
        let events = ending_events(&call, 5_000, &mut IdGenerator::new(7));
        let kinds: Vec<(String, i32)> = events
            .iter()
            .map(|e| (e.platform.clone(), decode(e).r#type))
            .collect();
        use pb::EventType as T;
        let order = [T::TransferFailed, T::ConferenceEnded, T::CallEnded];
        let expected: Vec<(String, i32)> = ["110", "12345"]
            .iter()
            .flat_map(|p| order.iter().map(move |t| (p.to_string(), *t as i32)))
            .collect();
        assert_eq!(kinds, expected);
        // One id per ending, the same for both platforms.
        assert_eq!(events[2].event_id, events[5].event_id);
        assert_ne!(events[0].event_id, events[2].event_id);
        let ended = decode(&events[2]);
        assert_eq!(
            (ended.ended_by, ended.reason.as_str(), ended.sip_status),
            (pb::EndedBy::Gateway as i32, REASON, 200)
        );
        assert_eq!(ended.called_leg.map(|l| l.platform), Some("12345".into()));
        assert_eq!(ended.ticket, None, "the ending carries no ticket");
        let from_record = decode(&events[5]);
        assert_eq!(from_record.citizen_number, "13800138000");
        assert_eq!(
            from_record.called_leg.map(|l| l.peer),
            Some("hotline".into())
        );
        assert_eq!(decode(&events[0]).linkage_id, "l1");
        assert_eq!(convert::unix_ms(decode(&events[0]).time.as_ref()), 5_000);
    }
}
