use super::*;
use crate::sip::message;

/// A peer repeating provisional responses (or in-dialog requests) fills an owner's inbox to
/// MAX_UNREAD and no further; the final response and the timeouts always get through, and
/// reading frees room again.
#[tokio::test]
async fn an_owners_inbox_takes_a_bounded_flood_and_every_final_answer() {
    let invite = match message::parse(
        b"INVITE sip:1@gw SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1\r\n\
From: <sip:a@10.0.0.5>;tag=a\r\nTo: <sip:1@gw>\r\nCall-ID: flood@test\r\nCSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    ) {
        Ok(Message::Request(r)) => r,
        other => panic!("{other:?}"),
    };
    let event = |status| SipEvent::Response {
        branch: "z9hG4bK1".into(),
        response: Response::for_request(&invite, status, Some("b")),
    };
    let (owner, mut inbox) = owner_channel();
    for _ in 0..MAX_UNREAD {
        assert!(owner.send(event(180)).is_ok());
    }
    assert!(
        owner.send(event(180)).is_err(),
        "the flood stops at MAX_UNREAD"
    );
    assert!(
        owner.send(event(200)).is_ok(),
        "a final response always goes"
    );
    let timeout = SipEvent::Timeout {
        branch: "z9hG4bK1".into(),
        method: Method::Invite,
    };
    assert!(owner.send(timeout).is_ok());
    assert!(matches!(
        inbox.recv().await,
        Some(SipEvent::Response { .. })
    ));
    assert!(owner.send(event(183)).is_ok(), "one read, one more fits");
}
