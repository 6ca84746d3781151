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
/// last frames once it completes the file, within a second of the end (`media::recording`),
/// and a server that had the BYE first would lose them.
pub const FLUSH: Duration = Duration::from_secs(1);
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
                let invite = response.cseq().is_some_and(|c| c.method == Method::Invite);
                if invite && self.branch.as_deref() == Some(branch.as_str()) {
                    self.handle_invite_response(now, &response);
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
            SipEvent::Ack { request } if request.call_id() == self.invite.call_id() => None,
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
            self.bye();
            self.finish(SessionEnd::WithCall);
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
            100 => {}
            101..=199 => {
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
        let Some(dialog) = self.dialog.as_mut() else {
            return;
        };
        dialog.refresh_target(response.contact());
        let ack = dialog.ack(sequence);
        self.send_with_via(ack);
        match self.state {
            State::Cancelling => {
                self.bye();
                self.finish(SessionEnd::WithCall);
            }
            State::Inviting => {
                self.state = State::Active;
                let streams = response
                    .sdp()
                    .and_then(|text| sdp::parse(text).ok())
                    .and_then(|answer| streams_in(&answer));
                match streams {
                    Some(streams) => self.actions.push_back(SessionAction::Stream(Some(streams))),
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
            State::Flushing | State::Done => {}
        }
    }

    /// A final non-2xx (or none, 408) to the INVITE under way.
    fn handle_invite_final(&mut self, now: Instant, status: u16) {
        self.branch = None;
        match self.state {
            State::Inviting | State::Cancelling => self.finish(SessionEnd::Refused(status)),
            State::Active if status == 491 => {
                // Glare with a re-INVITE of the server's: ours again later (§14.1).
                self.changed = true;
                self.retry_at = Some(now + GLARE_RETRY);
            }
            State::Active if status == 408 || status == 481 => {
                self.actions.push_back(SessionAction::Stream(None));
                self.finish(SessionEnd::Lost(status));
            }
            // Refused metadata leaves the session as it was; the next change tries again.
            State::Active => {
                tracing::warn!(status, "recording server refused the metadata update");
            }
            State::Flushing | State::Done => {}
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
                // The server's own offer (a pause, a new port): we keep sending as offered;
                // our SDP answers it (the same streams, still sendonly).
                Method::Invite | Method::Update if request.sdp().is_some() => {
                    self.offer.origin.bump();
                    response.headers.push("Contact", self.contact());
                    response.headers.push("Content-Type", "application/sdp");
                    response.body = Bytes::from(self.offer.to_string());
                }
                Method::Invite | Method::Update | Method::Options | Method::Info => {
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
        if media.port == 0 || media.media != "audio" || ip.is_unspecified() {
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

/// The INVITE's body (RFC 7866 §8): the SDP, then the metadata, as `multipart/mixed`.
fn multipart(sdp: &str, metadata: &str) -> String {
    format!(
        "--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n\
         --{BOUNDARY}\r\nContent-Type: {}\r\nContent-Disposition: recording-session\r\n\r\n\
         {metadata}\r\n--{BOUNDARY}--\r\n",
        metadata::CONTENT_TYPE
    )
}
