//! SIPREC (RFC 7866): the gateway as the session recording client of a call, giving a
//! recording server the centre already runs the same two streams the call's WAV holds, with
//! the RFC 7865 metadata ([`metadata`]) of who is in the call. Sans-IO.
//!
//! Call order: [`RecordingSession::new`] once the call is answered (it sends the INVITE: a
//! `multipart/mixed` body of the SDP offer, two `sendonly` audio streams labelled 1 and 2, and
//! the metadata; `Require: siprec`, `+sip.src` on the Contact, §6.1); feed it every SIP event of
//! the call's task first ([`RecordingSession::handle_sip`] hands back what is not its own), the
//! participant changes ([`RecordingSession::update`], each sent as a re-INVITE with the whole
//! metadata, one at a time), the clock when [`RecordingSession::poll_timeout`] is due, and the
//! call's end ([`RecordingSession::end`]); drain [`RecordingSession::poll_action`] after each.
//!
//! The session never touches the call: a recording server that refuses, fails or hangs up
//! ends only the session ([`SessionAction::Ended`]), and the citizen's call goes on.

pub mod metadata;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ids::IdGenerator;
use crate::media::codec::Codec;
use crate::routing::Peer;
use crate::sip::dialog::Dialog;
use crate::sip::message::{self, Headers, Host, Method, NameAddr, Request, Response, Uri};
use crate::sip::sdp::{self, Direction, MediaDescription, Origin, RtpMap, SessionDescription};
use crate::sip::target::{LocalAddresses, Target};
use crate::sip::transaction::{via_for, DialogKey, ServerTransactionId, SipEvent};

pub use metadata::Metadata;

/// The multipart body's boundary (RFC 2046 §5.1.1): it never occurs in SDP or in the
/// metadata, whose text is escaped.
const BOUNDARY: &str = "hotline-siprec-boundary";
/// The BYE waits this long after the call's end: the recorder's writer sends a recording's
/// last frames once it completes the file, at most a second after the end (on a queue that
/// never empties; at once otherwise), and a server that had the BYE first would lose them.
pub const FLUSH: Duration = Duration::from_secs(2);
/// RFC 3261 §14.1: after a 491, the owner of the Call-ID (we are) tries again after 2.1 to
/// 4 s; the lower end, since nothing else is waiting.
const GLARE_RETRY: Duration = Duration::from_millis(2100);

/// How the gateway reaches the recording server (`[recording] siprec`).
#[derive(Debug, Clone)]
pub struct SiprecSettings {
    /// The `[[peer]]` that is the recording server.
    pub peer: Arc<Peer>,
    /// Our SIP addresses, for Via and Contact.
    pub local: LocalAddresses,
    pub user_agent: Option<String>,
}

/// Where the recording server takes the two streams (index 0 what the citizen said, 1 what
/// the citizen heard), and in which codec; a stream it declined (port 0) is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamsTo {
    pub addresses: [Option<SocketAddr>; 2],
    pub codec: Codec,
    pub payload_type: u8,
}

/// Why a recording session ended before the call did (or with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The server answered the INVITE with this final status (408: no answer at all).
    Refused(u16),
    /// A re-INVITE found the dialog gone (408, 481; RFC 3261 §12.2.1.2).
    Lost(u16),
    /// The server sent BYE.
    ByServer,
    /// The call ended, and the session with it.
    WithCall,
}

/// What the driver carries out.
#[derive(Debug)]
pub enum SessionAction {
    SendRequest {
        request: Request,
        target: Target,
    },
    SendResponse {
        server: ServerTransactionId,
        response: Response,
    },
    RegisterDialog(DialogKey),
    UnregisterDialog(DialogKey),
    /// Send the streams there from now on (`Some`), or stop sending (`None`).
    Stream(Option<StreamsTo>),
    Ended(SessionEnd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The INVITE has no final answer yet.
    Inviting,
    Active,
    /// The call ended: the BYE goes at `flush_at`.
    Flushing,
    /// The call ended while the INVITE had no answer: a 2xx still to come is ACKed and
    /// released.
    Cancelling,
    Done,
}

/// One call's recording session, as its client.
pub struct RecordingSession {
    settings: Arc<SiprecSettings>,
    target: Target,
    ids: IdGenerator,
    state: State,
    /// The INVITE (or re-INVITE) last sent, for its ACK and CANCEL.
    invite: Request,
    /// Its branch while it has no final answer.
    branch: Option<String>,
    provisional: bool,
    dialog: Option<Dialog>,
    offer: SessionDescription,
    metadata: Metadata,
    /// The metadata changed since the last (re-)INVITE carried it.
    changed: bool,
    /// A re-INVITE met glare (491): the next one goes then.
    retry_at: Option<Instant>,
    /// When the BYE goes, once the call ended.
    flush_at: Option<Instant>,
    /// The CSeq of the INVITE last answered 2xx: a retransmission of that 2xx gets the ACK
    /// again (RFC 3261 §13.2.2.4).
    answered: Option<u32>,
    /// Where the streams go now, as the last offer or answer said.
    streams: Option<StreamsTo>,
    /// The call ended while a re-INVITE had no final answer: the BYE goes after it.
    bye_after_answer: bool,
    /// Branches of the BYE and CANCEL sent (their timeouts are the session's).
    others: Vec<String>,
    actions: VecDeque<SessionAction>,
}

impl RecordingSession {
    /// Starts the session: the INVITE to the recording server, offering the streams from the
    /// local RTP addresses `media` (said, heard).
    pub fn new(
        settings: Arc<SiprecSettings>,
        mut ids: IdGenerator,
        media: [SocketAddr; 2],
        metadata: Metadata,
    ) -> RecordingSession {
        let target = Target::for_peer(&settings.peer);
        let local = settings.local.for_target(target);
        let origin = Origin::new(media[0].ip(), ids.next_u64() >> 12);
        let offer = offer(origin, media);
        let branch = ids.branch();
        let uri = Uri::sip(
            None,
            Host::Ip(settings.peer.address.ip()),
            Some(settings.peer.address.port()),
        );
        let mut headers = Headers::new();
        headers.push("Via", via_for(local, target, &branch));
        headers.push("Max-Forwards", "70");
        let from = NameAddr::new(Uri::sip(
            Some("gw"),
            Host::Ip(local.ip()),
            Some(local.port()),
        ))
        .with_tag(&ids.tag());
        headers.push("From", from.to_string());
        headers.push("To", NameAddr::new(uri.clone()).to_string());
        headers.push("Call-ID", ids.call_id(&local.ip().to_string()));
        headers.push("CSeq", "1 INVITE");
        let invite = Request {
            method: Method::Invite,
            uri,
            headers,
            body: Bytes::new(),
        };
        let mut session = RecordingSession {
            settings,
            target,
            ids,
            state: State::Inviting,
            invite,
            branch: Some(branch),
            provisional: false,
            dialog: None,
            offer,
            metadata,
            changed: false,
            retry_at: None,
            flush_at: None,
            answered: None,
            streams: None,
            bye_after_answer: false,
            others: Vec::new(),
            actions: VecDeque::new(),
        };
        let mut invite = session.invite.clone();
        session.add_body(&mut invite);
        session.invite = invite.clone();
        session.send(invite);
        session
    }

    #[must_use]
    pub fn poll_action(&mut self) -> Option<SessionAction> {
        self.actions.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.retry_at, self.flush_at].into_iter().flatten().min()
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes `event` if it is the session's (a response to its requests, a request in its
    /// dialog); hands it back otherwise, for the call.
    pub fn handle_sip(&mut self, now: Instant, event: SipEvent) -> Option<SipEvent> {
        match event {
            SipEvent::Response { branch, response } => {
                if !self.owns_response(&response) {
                    return Some(SipEvent::Response { branch, response });
                }
                // The INVITE's answers; those to BYE and CANCEL need nothing (CANCEL's come
                // with the INVITE's branch, told apart by CSeq).
                let cseq = response.cseq().filter(|c| c.method == Method::Invite);
                if cseq.is_some() && self.branch.as_deref() == Some(branch.as_str()) {
                    self.handle_invite_response(now, &response);
                } else if (200..300).contains(&response.status)
                    && cseq.is_some_and(|c| Some(c.sequence) == self.answered)
                {
                    // Our ACK was lost: the server sends its 2xx again.
                    self.acknowledge(response.cseq().map_or(1, |c| c.sequence));
                }
                None
            }
            SipEvent::Timeout { branch, method } => {
                if method == Method::Invite && self.branch.as_deref() == Some(branch.as_str()) {
                    self.handle_invite_final(now, 408);
                    None
                } else if self.others.contains(&branch) {
                    None
                } else {
                    Some(SipEvent::Timeout { branch, method })
                }
            }
            SipEvent::Request {
                server,
                request,
                source,
            } => {
                if self.dialog.as_ref().is_some_and(|d| d.matches(&request)) {
                    self.handle_request(server, &request);
                    None
                } else {
                    Some(SipEvent::Request {
                        server,
                        request,
                        source,
                    })
                }
            }
            SipEvent::Ack { request } if request.call_id() == self.invite.call_id() => {
                // The answer to the offer our 2xx made (a re-INVITE of the server's without
                // one).
                if let Some(answer) = request.sdp().and_then(|text| sdp::parse(text).ok()) {
                    self.retarget(&answer);
                }
                None
            }
            event => Some(event),
        }
    }

    /// Applies a participant change to the metadata (`change` says whether it changed
    /// anything); a change goes to the server in a re-INVITE.
    pub fn update(
        &mut self,
        now: Instant,
        change: impl FnOnce(&mut Metadata, &mut IdGenerator) -> bool,
    ) {
        if self.state != State::Inviting && self.state != State::Active {
            return;
        }
        if change(&mut self.metadata, &mut self.ids) {
            self.changed = true;
            self.reinvite(now);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.flush_at.is_some_and(|at| at <= now) {
            self.flush_at = None;
            if self.branch.is_some() {
                // §15: a BYE while our re-INVITE has no answer would leave its 2xx
                // unacknowledged; it goes once the answer comes.
                self.bye_after_answer = true;
            } else {
                self.bye();
                self.finish(SessionEnd::WithCall);
            }
            return;
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.reinvite(now);
        }
    }

    /// The call ended at `now`: BYE once the streams' last frames are out ([`FLUSH`]), or
    /// CANCEL to an INVITE still ringing. The session is over once [`RecordingSession::is_done`].
    pub fn end(&mut self, now: Instant) {
        match self.state {
            State::Active => {
                self.state = State::Flushing;
                self.retry_at = None;
                self.flush_at = Some(now + FLUSH);
            }
            State::Inviting => {
                self.state = State::Cancelling;
                if self.provisional {
                    self.cancel();
                }
            }
            State::Flushing | State::Cancelling | State::Done => {}
        }
    }

    fn handle_invite_response(&mut self, now: Instant, response: &Response) {
        match response.status {
            100..=199 => {
                if !self.provisional && self.state == State::Cancelling {
                    self.cancel();
                }
                self.provisional = true;
            }
            200..=299 => self.handle_invite_answered(now, response),
            status => self.handle_invite_final(now, status),
        }
    }

    fn handle_invite_answered(&mut self, now: Instant, response: &Response) {
        self.branch = None;
        let sequence = self.invite.cseq().map_or(1, |c| c.sequence);
        if self.dialog.is_none() {
            let Some(dialog) = Dialog::new_uac(&self.invite, response) else {
                self.finish(SessionEnd::Refused(500));
                return;
            };
            self.actions
                .push_back(SessionAction::RegisterDialog(key(&dialog)));
            self.dialog = Some(dialog);
        }
        if let Some(dialog) = self.dialog.as_mut() {
            dialog.refresh_target(response.contact());
        }
        self.acknowledge(sequence);
        match self.state {
            State::Cancelling => {
                self.bye();
                self.finish(SessionEnd::WithCall);
            }
            State::Flushing => {
                if self.bye_after_answer {
                    self.bye();
                    self.finish(SessionEnd::WithCall);
                }
            }
            State::Inviting => {
                self.state = State::Active;
                let streams = response
                    .sdp()
                    .and_then(|text| sdp::parse(text).ok())
                    .and_then(|answer| streams_in(&answer))
                    .filter(|streams| streams.addresses.iter().any(Option::is_some));
                match streams {
                    Some(streams) => {
                        self.streams = Some(streams);
                        self.actions.push_back(SessionAction::Stream(Some(streams)));
                    }
                    None => {
                        // An answer with no stream we can send (RFC 3264 §6): nothing to
                        // record there; the session is released.
                        self.bye();
                        self.finish(SessionEnd::Refused(488));
                        return;
                    }
                }
                self.reinvite(now);
            }
            State::Active => self.reinvite(now),
            State::Done => {}
        }
    }

    /// The ACK for the 2xx to our INVITE of CSeq `sequence` (each time the 2xx comes).
    fn acknowledge(&mut self, sequence: u32) {
        let Some(ack) = self.dialog.as_ref().map(|d| d.ack(sequence)) else {
            return;
        };
        self.answered = Some(sequence);
        self.send_with_via(ack);
    }

    /// The server's offer or answer moved the streams (a new address, a stream made
    /// inactive): they go where it says from now on.
    fn retarget(&mut self, description: &SessionDescription) {
        let Some(streams) = streams_in(description) else {
            return;
        };
        if self.streams != Some(streams) {
            self.streams = Some(streams);
            self.actions.push_back(SessionAction::Stream(Some(streams)));
        }
    }

    /// A final non-2xx (or none, 408) to the INVITE under way.
    fn handle_invite_final(&mut self, now: Instant, status: u16) {
        self.branch = None;
        match self.state {
            State::Inviting => self.finish(SessionEnd::Refused(status)),
            // Our CANCEL's 487, or an answer crossing it: the call is over anyway.
            State::Cancelling => self.finish(SessionEnd::WithCall),
            State::Flushing => {
                if self.bye_after_answer {
                    self.bye();
                    self.finish(SessionEnd::WithCall);
                }
            }
            State::Active if status == 491 => {
                // Glare with a re-INVITE of the server's: ours again later (§14.1).
                self.changed = true;
                self.retry_at = Some(now + GLARE_RETRY);
            }
            State::Active if status == 408 || status == 481 => {
                // §12.2.1.2: the dialog is gone; a BYE in case the server still has it.
                self.actions.push_back(SessionAction::Stream(None));
                self.bye();
                self.finish(SessionEnd::Lost(status));
            }
            // Refused metadata leaves the session as it was; the next change sends it again
            // with itself (the metadata is complete each time).
            State::Active => {
                self.changed = true;
                tracing::warn!(status, "recording server refused the metadata update");
            }
            State::Done => {}
        }
    }

    fn handle_request(&mut self, server: ServerTransactionId, request: &Request) {
        let accepted = self
            .dialog
            .as_mut()
            .is_some_and(|d| d.accept_remote_sequence(request));
        let tag = self.dialog.as_ref().map(|d| d.local_tag().to_string());
        let mut response = Response::for_request(request, 200, tag.as_deref());
        if !accepted {
            response = Response::for_request(request, 500, tag.as_deref());
        } else {
            match request.method {
                Method::Bye => {
                    self.actions.push_back(SessionAction::Stream(None));
                    self.finish(SessionEnd::ByServer);
                }
                // §14.2 (RFC 3311 §5.2 for UPDATE): glare with our re-INVITE.
                Method::Invite | Method::Update if self.branch.is_some() => {
                    response = Response::for_request(request, 491, tag.as_deref());
                }
                // The server's own offer (a pause, a new port, another node of it): the
                // streams go where it says, answered stream by stream (RFC 3264 §6).
                Method::Invite | Method::Update if request.sdp().is_some() => {
                    match request.sdp().and_then(|text| sdp::parse(text).ok()) {
                        Some(offer) => {
                            self.retarget(&offer);
                            self.offer.origin.bump();
                            let answer = answer_to(&offer, &self.offer);
                            response.headers.push("Contact", self.contact());
                            response.headers.push("Content-Type", "application/sdp");
                            response.body = Bytes::from(answer.to_string());
                        }
                        None => response = Response::for_request(request, 488, tag.as_deref()),
                    }
                }
                // A re-INVITE without an offer: ours goes in the 2xx (§14.2), its answer in the
                // ACK.
                Method::Invite => {
                    self.offer.origin.bump();
                    response.headers.push("Contact", self.contact());
                    response.headers.push("Content-Type", "application/sdp");
                    response.body = Bytes::from(self.offer.to_string());
                }
                Method::Update | Method::Options | Method::Info => {
                    response.headers.push("Contact", self.contact());
                }
                _ => response = Response::for_request(request, 405, tag.as_deref()),
            }
        }
        if response.status == 405 {
            response
                .headers
                .push("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO");
        }
        self.actions
            .push_back(SessionAction::SendResponse { server, response });
    }

    /// Sends the changed metadata if the session can take a re-INVITE now.
    fn reinvite(&mut self, _now: Instant) {
        if self.state != State::Active
            || !self.changed
            || self.branch.is_some()
            || self.retry_at.is_some()
        {
            return;
        }
        let Some(dialog) = self.dialog.as_mut() else {
            return;
        };
        self.changed = false;
        let mut invite = dialog.request(Method::Invite);
        let branch = self.ids.branch();
        invite.headers.push_front(
            "Via",
            via_for(
                self.settings.local.for_target(self.target),
                self.target,
                &branch,
            ),
        );
        self.add_body(&mut invite);
        self.branch = Some(branch);
        self.provisional = false;
        self.invite = invite.clone();
        self.actions.push_back(SessionAction::SendRequest {
            request: invite,
            target: self.target,
        });
    }

    /// Contact, the SIPREC headers and the multipart body of an INVITE.
    fn add_body(&mut self, invite: &mut Request) {
        let headers = &mut invite.headers;
        headers.push("Contact", self.contact());
        headers.push("Require", "siprec");
        headers.push("Accept", "application/sdp, application/rs-metadata+xml");
        headers.push("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO");
        if let Some(agent) = &self.settings.user_agent {
            headers.push("User-Agent", agent.clone());
        }
        headers.push(
            "Content-Type",
            format!("multipart/mixed;boundary={BOUNDARY}"),
        );
        invite.body = Bytes::from(multipart(&self.offer.to_string(), &self.metadata.to_xml()));
    }

    /// RFC 7866 §6.1.1: the `+sip.src` feature tag marks us as a recording client.
    fn contact(&self) -> String {
        let local = self.settings.local.for_target(self.target);
        format!(
            "<sip:gw@{}:{}{}>;+sip.src",
            Host::Ip(local.ip()),
            local.port(),
            self.target.uri_transport()
        )
    }

    fn send(&mut self, request: Request) {
        self.actions.push_back(SessionAction::SendRequest {
            request,
            target: self.target,
        });
    }

    fn send_with_via(&mut self, mut request: Request) {
        let branch = self.ids.branch();
        request.headers.push_front(
            "Via",
            via_for(
                self.settings.local.for_target(self.target),
                self.target,
                &branch,
            ),
        );
        self.send(request);
    }

    fn bye(&mut self) {
        if let Some(bye) = self.dialog.as_mut().map(|d| d.request(Method::Bye)) {
            self.send_with_via(bye);
            if let Some(SessionAction::SendRequest { request, .. }) = self.actions.back() {
                if let Some(branch) = request
                    .top_via()
                    .and_then(|v| v.branch().map(str::to_string))
                {
                    self.others.push(branch);
                }
            }
        }
    }

    fn cancel(&mut self) {
        let cancel = message::cancel_for(&self.invite);
        if let Some(branch) = self.branch.clone() {
            self.others.push(branch);
        }
        self.send(cancel);
    }

    fn finish(&mut self, end: SessionEnd) {
        self.state = State::Done;
        self.retry_at = None;
        self.flush_at = None;
        if let Some(dialog) = &self.dialog {
            self.actions
                .push_back(SessionAction::UnregisterDialog(key(dialog)));
        }
        self.actions.push_back(SessionAction::Ended(end));
    }

    /// A response in the session's Call-ID: the answers to its BYE and CANCEL.
    fn owns_response(&self, response: &Response) -> bool {
        response.headers.get("Call-ID") == Some(self.invite.call_id())
    }
}

fn key(dialog: &Dialog) -> DialogKey {
    DialogKey {
        call_id: dialog.call_id().to_string(),
        local_tag: dialog.local_tag().to_string(),
    }
}

/// Two `sendonly` audio streams, labelled (RFC 4574) as the metadata names them, each
/// offering PCMA and PCMU: what the recorder sends is linear audio encoded once.
fn offer(origin: Origin, media: [SocketAddr; 2]) -> SessionDescription {
    let stream = |address: SocketAddr, label: &str| MediaDescription {
        media: "audio".into(),
        port: address.port(),
        protocol: "RTP/AVP".into(),
        formats: vec!["8".into(), "0".into()],
        rtpmaps: [Codec::Pcma, Codec::Pcmu]
            .iter()
            .map(|codec| RtpMap {
                payload_type: codec.static_payload_type(),
                encoding: codec.name().into(),
                clock_rate: 8000,
                channels: None,
            })
            .collect(),
        fmtps: Vec::new(),
        direction: Some(Direction::SendOnly),
        ptime: Some(20),
        connection: None,
        rtcp_port: None,
        other_attributes: vec![format!("label:{label}")],
    };
    SessionDescription {
        connection: Some(media[0].ip()),
        origin,
        session_name: "hotline-gateway recording".into(),
        direction: None,
        media: vec![
            stream(media[0], metadata::LABELS[0]),
            stream(media[1], metadata::LABELS[1]),
        ],
    }
}

/// Where the answer takes each stream, in the offer's order (RFC 3264 §6), and the first
/// G.711 payload type of the first stream taken.
fn streams_in(answer: &SessionDescription) -> Option<StreamsTo> {
    let mut addresses = [None; 2];
    let mut codec = None;
    for (index, media) in answer.media.iter().take(2).enumerate() {
        let Some(ip) = media.connection.or(answer.connection) else {
            continue;
        };
        // A stream the server does not take (port 0, inactive, or only sending).
        let direction = media
            .direction
            .or(answer.direction)
            .unwrap_or(Direction::SendRecv);
        let receives = matches!(direction, Direction::SendRecv | Direction::RecvOnly);
        if media.port == 0 || media.media != "audio" || ip.is_unspecified() || !receives {
            continue;
        }
        addresses[index] = Some(SocketAddr::new(ip, media.port));
        if codec.is_none() {
            codec = media.payload_types().find_map(|pt| {
                let name = media.encoding(pt).map(|(name, _)| name);
                name.as_deref().and_then(Codec::from_name).map(|c| (c, pt))
            });
        }
    }
    let (codec, payload_type) = codec?;
    addresses.iter().any(Option::is_some).then_some(StreamsTo {
        addresses,
        codec,
        payload_type,
    })
}

/// Our answer to the server's `offer`: its m-lines in its order (RFC 3264 §6), each one ours
/// (`sendonly`, the offered G.711 codec), port 0 where it has port 0 or is no audio, inactive
/// where it does not receive.
fn answer_to(offer: &SessionDescription, ours: &SessionDescription) -> SessionDescription {
    let mut answer = ours.clone();
    answer.media = offer
        .media
        .iter()
        .enumerate()
        .map(|(index, offered)| {
            let mut media = ours
                .media
                .get(index.min(1))
                .cloned()
                .unwrap_or_else(|| offered.clone());
            let codec = offered.payload_types().find(|pt| {
                offered
                    .encoding(*pt)
                    .is_some_and(|(name, _)| Codec::from_name(&name).is_some())
            });
            let direction = offered
                .direction
                .or(offer.direction)
                .unwrap_or(Direction::SendRecv);
            match codec {
                Some(pt) if offered.port != 0 && offered.media == "audio" && index < 2 => {
                    media.formats = vec![pt.to_string()];
                    media.rtpmaps.retain(|map| map.payload_type == pt);
                    media.direction = Some(match direction {
                        Direction::SendRecv | Direction::RecvOnly => Direction::SendOnly,
                        _ => Direction::Inactive,
                    });
                }
                _ => {
                    media = offered.clone();
                    media.port = 0;
                }
            }
            media
        })
        .collect();
    answer
}

/// The INVITE's body (RFC 7866 §8): the SDP, then the metadata, as `multipart/mixed`.
fn multipart(sdp: &str, metadata: &str) -> String {
    format!(
        "--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n\
         --{BOUNDARY}\r\nContent-Type: {}\r\nContent-Disposition: recording-session\r\n\r\n\
         {metadata}\r\n--{BOUNDARY}--\r\n",
        metadata::CONTENT_TYPE
    )
}
