//! `[announcements.whisper]` on the fake clock: the answering 110 operator hears the prompt of
//! the ticket's urgency class before the citizen, who goes on hearing the transfer
//! announcement until the prompt has played.

use super::*;
use crate::call::model::{UrgencyClass, Whispers};
use crate::media::prompt::Prompt;

/// A prompt of `ms` milliseconds.
fn prompt(ms: usize) -> Prompt {
    Prompt::from_samples(vec![1000; ms * 8], 0)
}

/// A D-class prompt of 800 ms for operators at `platforms`.
fn class_d_for(platforms: &[&str]) -> Whispers {
    Whispers {
        platforms: platforms.iter().map(|p| p.to_string()).collect(),
        class_d: Some(prompt(800)),
        ..Whispers::default()
    }
}

/// A call answered at the hotline whose agent REFERs it to 110.
fn transfer_with(whispers: Whispers, class: Option<UrgencyClass>) -> Harness {
    let mut settings = (*settings()).clone();
    settings.whispers = whispers;
    let mut h = Harness::build_with(
        Arc::new(settings),
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![peer_with_platform("hotline", 5080, "12345")],
    );
    h.call.set_urgency(class);
    h.answer();
    h.agent_sends(7, "REFER", 2, "Refer-To: <sip:110@127.0.0.1>\r\n");
    assert_eq!(statuses(&h.responses(7)), vec![202]);
    h
}

/// A class D call answered at the hotline, whose agent invites 110 (heard with a whisper) as
/// a conference guest.
fn class_d_call_inviting_110() -> Harness {
    let mut settings = (*settings()).clone();
    settings.whispers = class_d_for(&["110"]);
    let mut h = Harness::build_with(
        Arc::new(settings),
        invite(OFFER, 70),
        peer("carrier", 5070),
        "12345",
        vec![peer_with_platform("hotline", 5080, "12345")],
    );
    h.call.set_urgency(Some(UrgencyClass::D));
    h.answer();
    h.invite_guest("110");
    h
}

fn announced(h: &Harness, party: Party, prompt: bool) -> bool {
    h.sent_media(|m| match m {
        MediaCommand::Announce(p, Some(Announcement::Prompt(_))) => *p == party && prompt,
        MediaCommand::Announce(p, None) => *p == party && !prompt,
        _ => false,
    })
}

#[test]
fn the_answering_operator_hears_the_class_d_whisper_before_the_citizen() {
    let mut h = transfer_with(class_d_for(&["110"]), Some(UrgencyClass::D));
    h.respond_to_invite(200, Some(ANSWER));
    assert!(announced(&h, Party::B, true), "110 hears the whisper");
    assert!(
        h.sent_media(|m| matches!(
            m,
            MediaCommand::Announce(Party::A, Some(Announcement::Ringback))
        )),
        "the citizen waits, hearing ringback (no transfer announcement configured)"
    );
    assert!(!announced(&h, Party::B, false), "not bridged yet");
    for party in [Party::A, Party::B] {
        assert!(
            h.sent_media(|m| *m == MediaCommand::Isolate(party, true)),
            "neither hears the other meanwhile"
        );
    }
    h.advance(Duration::from_millis(799));
    assert!(
        !announced(&h, Party::B, false),
        "still whispering at 799 ms"
    );
    h.advance(Duration::from_millis(1));
    assert!(announced(&h, Party::B, false), "bridged after the prompt");
    assert!(announced(&h, Party::A, false), "the citizen hears 110");
    assert!(h.sent_media(|m| *m == MediaCommand::Isolate(Party::A, false)));
    assert!(h.sent_media(|m| *m == MediaCommand::Isolate(Party::B, false)));
    assert!(h.outcome().is_none());
}

#[test]
fn a_class_without_a_prompt_or_another_platform_is_bridged_at_once() {
    for (whispers, class) in [
        (class_d_for(&["110"]), Some(UrgencyClass::B)),
        (class_d_for(&["110"]), None),
        (class_d_for(&["119"]), Some(UrgencyClass::D)),
    ] {
        let mut h = transfer_with(whispers, class);
        h.respond_to_invite(200, Some(ANSWER));
        assert!(!announced(&h, Party::B, true), "no whisper for {class:?}");
        assert!(
            !h.sent_media(|m| matches!(m, MediaCommand::Announce(Party::A, Some(_)))),
            "the citizen is not made to wait"
        );
    }
}

/// A call without a ticket hears the `unclassified` prompt, at any platform when none is
/// named.
#[test]
fn a_call_without_a_ticket_hears_the_unclassified_prompt() {
    let whispers = Whispers {
        unclassified: Some(prompt(300)),
        ..Whispers::default()
    };
    let mut h = transfer_with(whispers, None);
    h.respond_to_invite(200, Some(ANSWER));
    assert!(announced(&h, Party::B, true));
    h.advance(Duration::from_millis(300));
    assert!(announced(&h, Party::B, false));
}

/// The citizen hanging up during the whisper ends the call as usual.
#[test]
fn the_citizen_leaving_during_the_whisper_ends_the_call() {
    let mut h = transfer_with(class_d_for(&[]), Some(UrgencyClass::D));
    h.respond_to_invite(200, Some(ANSWER));
    h.caller_sends(9, "BYE", 2, "");
    assert_eq!(h.outcome().map(|o| o.ended_by), Some(EndedBy::Caller));
    let byes = h.sent(Method::Bye);
    assert!(
        byes.iter()
            .any(|(_, target)| matches!(target, Target::Udp(_, at) if at.port() == 5090)),
        "110 gets the BYE"
    );
}

/// No transfer or conference starts while the new party hears its whisper.
#[test]
fn nothing_new_starts_during_the_whisper() {
    let mut h = transfer_with(class_d_for(&[]), Some(UrgencyClass::D));
    h.respond_to_invite(200, Some(ANSWER));
    assert_eq!(
        h.call.transfer(h.now, Leg::B, "12345", Trigger::Api),
        Err(TransferError::InProgress)
    );
    assert_eq!(
        h.call.conference(h.now, Leg::B, "12345", Trigger::Api),
        Err(TransferError::InProgress)
    );
    h.advance(Duration::from_millis(800));
    assert!(h
        .call
        .transfer(h.now, Leg::B, "12345", Trigger::Api)
        .is_ok());
}

/// A conference guest at 110 hears the whisper before it joins the call's audio; citizen and
/// agent talk on meanwhile.
#[test]
fn a_conference_guest_hears_the_whisper_before_it_joins() {
    let mut h = class_d_call_inviting_110();
    let guest = Party::guest(0).unwrap_or_else(|| unreachable!());
    h.respond_to_invite(200, Some(ANSWER));
    assert!(announced(&h, guest, true), "the guest hears the whisper");
    assert!(
        !h.sent_media(|m| *m == MediaCommand::Join(guest)),
        "not in yet"
    );
    let joined = |h: &Harness| {
        h.actions
            .iter()
            .any(|a| matches!(a, Action::Conference(ConferenceUpdate::Joined { .. })))
    };
    assert!(!joined(&h), "nor in the conference's record");
    assert!(
        !h.sent_media(|m| matches!(m, MediaCommand::Isolate(..))),
        "citizen and agent talk on"
    );
    h.advance(Duration::from_millis(800));
    assert!(announced(&h, guest, false));
    assert!(
        h.sent_media(|m| *m == MediaCommand::Join(guest)),
        "then it joins"
    );
    assert!(joined(&h));
}

/// The guest hangs up during its whisper: nothing waits for it any more (a transfer may
/// start) and it never joins.
#[test]
fn a_guest_leaving_during_its_whisper_leaves_nothing_behind() {
    let mut h = class_d_call_inviting_110();
    h.respond_to_invite(200, Some(ANSWER));
    h.callee_sends(9, "BYE", 1);
    assert!(h.outcome().is_none(), "citizen and agent stay");
    assert!(h.call.transfer(h.now, Leg::B, "110", Trigger::Api).is_ok());
    h.advance(Duration::from_millis(800));
    let guest = Party::guest(0).unwrap_or_else(|| unreachable!());
    assert!(!h.sent_media(|m| *m == MediaCommand::Join(guest)));
}

/// The agent left while its guest rang: the guest takes its leg over and hears the whisper as
/// a transfer target does, the citizen kept apart from it until the prompt has played.
#[test]
fn a_guest_taking_the_agents_leg_hears_the_whisper_first() {
    let mut h = class_d_call_inviting_110();
    h.respond_to_invite(180, None);
    h.agent_sends(8, "BYE", 3, "");
    h.respond_to_invite(200, Some(ANSWER));
    let guest = Party::guest(0).unwrap_or_else(|| unreachable!());
    assert!(announced(&h, guest, true), "the guest hears the whisper");
    assert!(h.sent_media(|m| *m == MediaCommand::Isolate(Party::A, true)));
    h.advance(Duration::from_millis(800));
    assert!(h.sent_media(|m| *m == MediaCommand::Isolate(Party::A, false)));
    assert!(h.outcome().is_none(), "citizen and 110 talk");
}
