//! A recorded call's SIPREC session as its task keeps it (`[recording] siprec`): begun with the
//! recording at the answer, from two port pairs of the recording server's interface; told
//! each participant change, linkage and ticket; ended with the call. Its SIP goes through the
//! call's own endpoint owner (the task hands the session each event first), its streams are
//! sent by the recorder's writer ([`crate::media::recording::Forward`]).

use std::sync::Arc;
use std::time::SystemTime;

use crate::call::model::{ConferenceUpdate, LinkageUpdate};
use crate::call::siprec::metadata::{Linkage, Party};
use crate::call::siprec::{Metadata, RecordingSession, SessionAction, SessionEnd};
use crate::ids::IdGenerator;
use crate::media::ports::LegSockets;
use crate::media::recording::{Forward, ForwardStream};
use crate::metrics::Counter;
use crate::routing::Router;
use crate::sip::endpoint::Owner;
use crate::store::{unix_millis, LinkageRecord};

use super::driver::{driver_now, CallServices, Records};

/// The call's recording session and the ports it offered.
pub(super) struct Siprec {
    session: RecordingSession,
    /// The two port pairs offered (said, heard), until the answer says where they send to.
    sockets: Option<[LegSockets; 2]>,
    starts: [RtpStart; 2],
    router: Arc<Router>,
}

/// The metadata's view of the party reached through `peer` as `number`.
fn party(router: &Router, number: &str, peer: &str) -> Party {
    let found = router.peer_by_name(peer);
    // RFC 3323 §4.1.1.3's anonymous URI for a caller with no number.
    let number = if number.is_empty() {
        "anonymous"
    } else {
        number
    };
    Party {
        number: number.to_string(),
        host: found.as_ref().map_or_else(
            || "anonymous.invalid".to_string(),
            |p| crate::sip::message::Host::Ip(p.address.ip()).to_string(),
        ),
        peer: peer.to_string(),
        platform: found.and_then(|p| p.platform.clone()),
    }
}

/// Begins the session of a call just recorded, answered by `answered_peer`.
pub(super) fn begin(records: &mut Records, answered_peer: &str, services: &CallServices) {
    let (Some(settings), Some((_, router)), Some(_)) = (
        services.siprec.as_ref(),
        services.recording.as_ref(),
        records.recording.as_ref(),
    ) else {
        return;
    };
    let Ok(mut ids) = IdGenerator::from_entropy() else {
        tracing::error!("SIPREC session not begun: no entropy");
        return;
    };
    let pool = services.ports.of(usize::from(settings.peer.interface.0));
    // A second sink: it never takes the ports kept for the reserved platforms' calls.
    let kept = services.reserved_port_pairs;
    let sockets = match (pool.allocate_leaving(kept), pool.allocate_leaving(kept)) {
        (Ok(said), Ok(heard)) => [said, heard],
        (Err(shortage), _) | (_, Err(shortage)) => {
            services.metrics.increment(Counter::SiprecFailures);
            tracing::warn!(%shortage, "SIPREC session not begun");
            return;
        }
    };
    let call = &records.call;
    let metadata = Metadata::new(
        &mut ids,
        &call.id,
        unix_millis(SystemTime::now()),
        party(router, &call.caller, &call.a_peer),
        party(router, &call.called, answered_peer),
    );
    let media = [sockets[0].rtp_address(), sockets[1].rtp_address()];
    let starts = [RtpStart::new(&mut ids), RtpStart::new(&mut ids)];
    let session = RecordingSession::new(Arc::clone(settings), ids, media, metadata);
    records.siprec = Some(Siprec {
        session,
        sockets: Some(sockets),
        starts,
        router: Arc::clone(router),
    });
}

impl Siprec {
    /// A linkage's progress: in the metadata, and a transfer's answer moves party 1 to the
    /// target.
    pub(super) fn linkage(&mut self, update: &LinkageUpdate, linkage: &LinkageRecord) {
        let now = unix_millis(SystemTime::now());
        let router = Arc::clone(&self.router);
        let moved = matches!(update, LinkageUpdate::Answered { .. }) && linkage.kind == "transfer";
        self.session.update(driver_now(), |metadata, ids| {
            let mut changed = metadata.linkage(Linkage {
                id: linkage.id.clone(),
                kind: linkage.kind.clone(),
                target: linkage.target.clone(),
                outcome: linkage.outcome.clone(),
            });
            if moved {
                let peer = linkage.to_peer.as_deref().unwrap_or_default();
                changed |= metadata.joined(ids, now, 1, party(&router, &linkage.target, peer));
            }
            changed
        });
    }

    /// A conference party joining or leaving.
    pub(super) fn conference(&mut self, update: &ConferenceUpdate) {
        let now = unix_millis(SystemTime::now());
        let router = Arc::clone(&self.router);
        self.session
            .update(driver_now(), |metadata, ids| match update {
                ConferenceUpdate::Joined {
                    party: index,
                    peer,
                    number,
                } => metadata.joined(ids, now, index.index(), party(&router, number, peer)),
                ConferenceUpdate::Left { party } => metadata.left(now, party.index()),
                ConferenceUpdate::Started | ConferenceUpdate::Ended => false,
            });
    }

    /// The call's ticket, once attached.
    pub(super) fn ticket(&mut self, number: Option<&str>) {
        if let Some(number) = number {
            self.session
                .update(driver_now(), |metadata, _| metadata.ticket(number));
        }
    }

    /// Takes the SIP event if it is the session's; hands it back for the call otherwise.
    pub(super) fn handle_sip(
        &mut self,
        now: std::time::Instant,
        event: crate::sip::transaction::SipEvent,
    ) -> Option<crate::sip::transaction::SipEvent> {
        self.session.handle_sip(now, event)
    }

    pub(super) fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.session.poll_timeout()
    }

    pub(super) fn handle_timeout(&mut self, now: std::time::Instant) {
        self.session.handle_timeout(now);
    }

    pub(super) fn end(&mut self) {
        self.session.end(driver_now());
    }
}

/// Carries out the session's actions; it is dropped once over.
pub(super) fn carry_out(records: &mut Records, owner: &Owner, services: &CallServices) {
    let Some(siprec) = records.siprec.as_mut() else {
        return;
    };
    if siprec.carry_out(records.recording.as_ref(), owner, services) {
        records.siprec = None;
    }
}

/// A session still under way when its call's task is done (its BYE waits for the streams'
/// last frames, or its INVITE for an answer): kept on the call's SIP events until it is over
/// or the endpoint stops.
pub(super) async fn linger(
    mut siprec: Siprec,
    mut inbox: crate::sip::endpoint::Inbox,
    owner: Owner,
    services: CallServices,
) {
    loop {
        if siprec.carry_out(None, &owner, &services) {
            break;
        }
        let deadline = siprec.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = inbox.recv() => match event {
                // What else comes is for the call, which is over.
                Some(event) => drop(siprec.handle_sip(driver_now(), event)),
                None => break,
            },
            _ = sleep => siprec.handle_timeout(driver_now()),
        }
    }
}

impl Siprec {
    /// Carries out the session's actions (the streams attached to `recording`); true once the
    /// session is over.
    fn carry_out(
        &mut self,
        recording: Option<&crate::media::recording::Recording>,
        owner: &Owner,
        services: &CallServices,
    ) -> bool {
        let siprec = self;
        while let Some(action) = siprec.session.poll_action() {
            match action {
                SessionAction::SendRequest { request, target } => {
                    services
                        .endpoint
                        .send_request(request, target, owner.clone())
                }
                SessionAction::SendResponse { server, response } => {
                    services.endpoint.send_response(server, response)
                }
                SessionAction::RegisterDialog(key) => {
                    services.endpoint.register_dialog(key, owner.clone())
                }
                SessionAction::UnregisterDialog(key) => services.endpoint.unregister_dialog(&key),
                SessionAction::Stream(Some(to)) => {
                    let Some(recording) = recording else {
                        continue;
                    };
                    match siprec.sockets.take() {
                        Some(sockets) => {
                            services.metrics.increment(Counter::SiprecSessions);
                            tracing::info!("SIPREC session answered");
                            let streams = streams(sockets, to.addresses, siprec.starts);
                            recording.forward(Some(Forward::new(
                                streams,
                                to.codec,
                                to.payload_type,
                            )));
                        }
                        // The server moved them (its own re-INVITE).
                        None => recording.retarget(to.addresses, to.codec, to.payload_type),
                    }
                }
                SessionAction::Stream(None) => {
                    if let Some(recording) = recording {
                        recording.forward(None);
                    }
                }
                SessionAction::Ended(end) => match end {
                    SessionEnd::WithCall => {}
                    SessionEnd::ByServer => tracing::info!("SIPREC session ended by the server"),
                    SessionEnd::Refused(status) | SessionEnd::Lost(status) => {
                        services.metrics.increment(Counter::SiprecFailures);
                        tracing::warn!(status, ?end, "SIPREC session failed; the call goes on");
                    }
                },
            }
        }
        siprec.session.is_done()
    }
}

/// The offered sockets, each with where the answer takes its stream and its RTP starts.
fn streams(
    sockets: [LegSockets; 2],
    addresses: [Option<std::net::SocketAddr>; 2],
    starts: [RtpStart; 2],
) -> [ForwardStream; 2] {
    let [said, heard] = sockets;
    let stream = |sockets, to, start: RtpStart| ForwardStream {
        sockets,
        to,
        ssrc: start.ssrc,
        sequence: start.sequence,
        timestamp: start.timestamp,
    };
    [
        stream(said, addresses[0], starts[0]),
        stream(heard, addresses[1], starts[1]),
    ]
}

/// A stream's random SSRC, first sequence number and first timestamp (RFC 3550 §5.1).
#[derive(Debug, Clone, Copy)]
struct RtpStart {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
}

impl RtpStart {
    fn new(ids: &mut IdGenerator) -> RtpStart {
        RtpStart {
            ssrc: ids.ssrc(),
            sequence: ids.u16(),
            timestamp: ids.ssrc(),
        }
    }
}
