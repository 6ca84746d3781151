//! RFC 4028 session timers on the call model: each answered leg has its own (the gateway is a
//! B2BUA), negotiated in that leg's INVITE/2xx and refreshed with UPDATE (re-INVITE if the
//! peer does not allow UPDATE). A refresh that times out or is answered 408/481, or a peer
//! that was to refresh and did not, means the dialog is dead: the call is ended with BYE
//! (§10) and its record says why.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fork::Attempt;
use super::{Action, Call, EndedBy, State, Timer};
use crate::media::Leg;
use crate::sip::message::{Headers, Method, Request, Response};
use crate::sip::session_timer::{
    self, negotiate_as_uac, negotiate_as_uas, Refresher, Role, SessionExpires, SessionTimer,
    SessionTimerSettings, UasDecision,
};
use crate::sip::target::Target;

/// A refresh that failed for another reason (491, 500) is tried again this much later.
const RETRY: Duration = Duration::from_secs(2);

/// One leg's session timer and the refresh of ours under way.
#[derive(Debug, Default)]
pub(super) struct LegSession {
    pub(super) timer: Option<SessionTimer>,
    refresh: Option<Refresh>,
}

/// A refresh the gateway sent.
#[derive(Debug)]
struct Refresh {
    branch: String,
    method: Method,
    sequence: u32,
    target: Target,
    /// A 2xx came (a re-INVITE's retransmitted 2xx is acknowledged again, §13.2.2.4).
    answered: bool,
}

impl LegSession {
    /// Our refresh of `old` went again as `new` with CSeq `sequence` (answering a challenge):
    /// its answers and its ACK follow the new one.
    pub(super) fn rebranch(&mut self, old: &str, new: &str, sequence: u32) {
        if let Some(refresh) = self.refresh.as_mut().filter(|r| r.branch == old) {
            refresh.branch = new.to_string();
            refresh.sequence = sequence;
        }
    }
}

fn timer_of(leg: Leg) -> Timer {
    match leg {
        Leg::A => Timer::SessionA,
        Leg::B => Timer::SessionB,
    }
}

impl Call {
    /// §9: a caller asking for a session interval below our Min-SE gets 422 (true if so).
    pub(super) fn refuse_short_session(&mut self) -> bool {
        let Some(settings) = self.settings.session_timers else {
            return false;
        };
        let UasDecision::TooSmall { min_se } = negotiate_as_uas(&self.caller.invite, &settings)
        else {
            return false;
        };
        let mut response =
            Response::for_request(&self.caller.invite, 422, Some(&self.legs[Leg::A].tag));
        response.reason = "Session Interval Too Small".into();
        response
            .headers
            .push("Min-SE", min_se.as_secs().to_string());
        self.caller.finalized = true;
        self.actions.push_back(Action::SendResponse {
            server: self.caller.server,
            response,
        });
        self.end(EndedBy::Gateway, "session interval too small", 422, false);
        true
    }

    /// §7.1: what an INVITE of ours (leg B, a transfer target) asks for.
    pub(super) fn offer_session_timer(&self, headers: &mut Headers) {
        if let Some(settings) = self.settings.session_timers {
            headers.push("Supported", "timer");
            headers.push(
                "Session-Expires",
                settings.session_expires.as_secs().to_string(),
            );
            headers.push("Min-SE", settings.min_se.as_secs().to_string());
        }
    }

    /// RFC 4028 §7.3: the callee wants a longer interval (422 with Min-SE): the same INVITE
    /// again, once, with CSeq + 1 and that interval. False if there is nothing to retry.
    pub(super) fn retry_with_min_se(&mut self, now: Instant, response: &Response) -> bool {
        if self.state != State::Calling || self.cancelled {
            return false;
        }
        let Some((index, invite, target, floor)) =
            retry_interval(self.settings.session_timers, self.setup.attempt(), response)
        else {
            return false;
        };
        let retry = self.reinvite_with_interval(index, invite, target, floor);
        tracing::info!(call = %self.id, interval = floor.as_secs(), "callee asked a longer session interval: INVITE again");
        if let Some(mut previous) = self.setup.sent(now, retry) {
            previous.settled = true;
            self.retired.retire(previous);
        }
        true
    }

    /// The same for a transfer target's 422: its INVITE again, once, with its Min-SE.
    pub(super) fn retry_transfer_with_min_se(&mut self, now: Instant, response: &Response) -> bool {
        let attempt = self.transfer.as_ref().and_then(|t| t.fork.attempt());
        let Some((index, invite, target, floor)) =
            retry_interval(self.settings.session_timers, attempt, response)
        else {
            return false;
        };
        let retry = self.reinvite_with_interval(index, invite, target, floor);
        tracing::info!(call = %self.id, interval = floor.as_secs(), "transfer target asked a longer session interval: INVITE again");
        // As for a new peer: the refused attempt's ringing and early media end, and the
        // ring timeout starts again with the retry's first provisional response.
        self.end_transfer_attempt_media();
        let previous = self.transfer.as_mut().and_then(|t| t.fork.sent(now, retry));
        if let Some(mut previous) = previous {
            previous.settled = true;
            self.retired.retire(previous);
        }
        true
    }

    /// An attempt's INVITE again with CSeq + 1, `interval` as Session-Expires and Min-SE and a
    /// new branch (§7.3), sent; the attempt to track it.
    fn reinvite_with_interval(
        &mut self,
        index: usize,
        mut invite: Request,
        target: Target,
        interval: Duration,
    ) -> Attempt {
        let sequence = invite.cseq().map_or(1, |c| c.sequence) + 1;
        invite.headers.set("CSeq", format!("{sequence} INVITE"));
        invite
            .headers
            .set("Session-Expires", interval.as_secs().to_string());
        invite.headers.set("Min-SE", interval.as_secs().to_string());
        let branch = self.ids.branch();
        invite.headers.set(
            "Via",
            crate::sip::transaction::via_for(self.settings.local_for(target), target, &branch),
        );
        self.actions.push_back(Action::SendRequest {
            request: invite.clone(),
            target,
        });
        let mut retry = Attempt::new(index, invite, branch, target);
        retry.session_retried = true;
        retry
    }

    /// Leg A answered: its timer as our 2xx grants it (headers added to `response`).
    pub(super) fn start_caller_session(&mut self, now: Instant, response: &mut Response) {
        let Some(settings) = self.settings.session_timers else {
            return;
        };
        let UasDecision::Use {
            interval,
            refresher,
        } = negotiate_as_uas(&self.caller.invite, &settings)
        else {
            return;
        };
        let timer = SessionTimer {
            interval,
            refresher,
            since: now,
            update: session_timer::allows_update(self.caller.invite.headers.list("Allow")),
        };
        add_response_headers(&mut response.headers, &timer);
        self.set_session(Leg::A, Some(timer));
    }

    /// A 2xx to our INVITE made `leg`'s dialog (leg B's callee, a transfer target).
    pub(super) fn start_callee_session(&mut self, now: Instant, leg: Leg, response: &Response) {
        let Some(settings) = self.settings.session_timers else {
            self.set_session(leg, None);
            return;
        };
        let (interval, refresher) = negotiate_as_uac(response, settings.session_expires, &settings);
        let timer = SessionTimer {
            interval,
            refresher,
            since: now,
            update: session_timer::allows_update(response.headers.list("Allow")),
        };
        self.set_session(leg, Some(timer));
    }

    /// `leg`'s dialog went to a party whose INVITE offered no timer (a conference guest).
    pub(super) fn end_session(&mut self, leg: Leg) {
        self.set_session(leg, None);
    }

    fn set_session(&mut self, leg: Leg, timer: Option<SessionTimer>) {
        let session = &mut self.legs[leg].session;
        session.timer = timer;
        session.refresh = None;
        self.arm_session(leg);
    }

    /// Whether our refresh re-INVITE on `leg` still waits for its answer (a peer's re-INVITE
    /// meanwhile gets 491, RFC 3261 §14.2).
    pub(super) fn refresh_invite_pending(&self, leg: Leg) -> bool {
        self.legs[leg]
            .session
            .refresh
            .as_ref()
            .is_some_and(|r| r.method == Method::Invite && !r.answered)
    }

    fn arm_session(&mut self, leg: Leg) {
        let session = &self.legs[leg].session;
        let at = session.timer.map(|timer| match &session.refresh {
            Some(refresh) if !refresh.answered => timer.expires(),
            _ => timer.due(),
        });
        self.arm(timer_of(leg), at);
    }

    /// The peer on `leg` sent a re-INVITE or UPDATE: a refresh (§9) once answered 2xx. The
    /// timer it would set (None with timers off), or the Min-SE of a 422.
    pub(super) fn peer_refresh(
        &self,
        now: Instant,
        leg: Leg,
        request: &Request,
    ) -> Result<Option<SessionTimer>, Duration> {
        let Some(settings) = self.settings.session_timers else {
            return Ok(None);
        };
        match negotiate_as_uas(request, &settings) {
            UasDecision::TooSmall { min_se } => Err(min_se),
            UasDecision::Use {
                interval,
                refresher,
            } => {
                let update = match self.legs[leg].session.timer {
                    Some(timer) => timer.update,
                    None => session_timer::allows_update(request.headers.list("Allow")),
                };
                Ok(Some(SessionTimer {
                    interval,
                    refresher,
                    since: now,
                    update,
                }))
            }
        }
    }

    /// The peer's refresh was answered 2xx: its timer applies; the headers for that 2xx. A
    /// refresh of ours still under way stays tracked (its 2xx must be acknowledged).
    pub(super) fn peer_refreshed(&mut self, leg: Leg, timer: Option<SessionTimer>) -> Headers {
        let mut headers = Headers::new();
        if let Some(timer) = timer {
            add_response_headers(&mut headers, &timer);
            self.legs[leg].session.timer = Some(timer);
            if self.legs[leg]
                .session
                .refresh
                .as_ref()
                .is_some_and(|r| r.method == Method::Update || r.answered)
            {
                self.legs[leg].session.refresh = None;
            }
            self.arm_session(leg);
        }
        headers
    }

    /// `leg`'s session timer is due: refresh it, or end a session the peer let expire.
    pub(super) fn session_due(&mut self, leg: Leg) {
        // A queued caller's session runs from its answer, before any desk's.
        let live = self.state == State::Answered || (leg == Leg::A && self.is_queued());
        if !live || self.legs[leg].dialog.is_none() {
            return;
        }
        let session = &self.legs[leg].session;
        let Some(timer) = session.timer else {
            return;
        };
        if session.refresh.as_ref().is_some_and(|r| !r.answered) {
            self.session_dead(leg, "session refresh unanswered");
            return;
        }
        match timer.refresher {
            Refresher::Gateway => self.send_refresh(leg),
            Refresher::Peer => self.session_dead(leg, "session expired"),
        }
    }

    /// §10: UPDATE without a body, or a re-INVITE offering the SDP we last sent unchanged.
    fn send_refresh(&mut self, leg: Leg) {
        let Some(timer) = self.legs[leg].session.timer else {
            return;
        };
        let target = self.legs[leg].target;
        let contact = self.contact(target);
        let local_sdp = self.legs[leg].local_sdp.clone();
        let method = if timer.update || local_sdp.is_none() {
            Method::Update
        } else {
            Method::Invite
        };
        let Some(dialog) = self.legs[leg].dialog.as_mut() else {
            return;
        };
        let request = dialog.request(method.clone());
        let mut request = self.with_via(request, target);
        let sequence = request.cseq().map_or(0, |c| c.sequence);
        request.headers.push("Contact", contact);
        request.headers.push("Supported", "timer");
        request.headers.push(
            "Session-Expires",
            SessionExpires::header(timer.interval, Role::Uac),
        );
        if method == Method::Invite {
            if let Some(sdp) = local_sdp {
                request.headers.push("Content-Type", "application/sdp");
                request.body = Bytes::from(sdp);
            }
        }
        let branch = request
            .top_via()
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default();
        tracing::debug!(call = %self.id, ?leg, method = method.as_str(), "session refresh");
        let credentials = self.leg_outbound(leg);
        self.send_in_dialog(request, target, credentials);
        self.legs[leg].session.refresh = Some(Refresh {
            branch,
            method,
            sequence,
            target,
            answered: false,
        });
        self.arm_session(leg);
    }

    fn refresh_leg(&self, branch: &str) -> Option<Leg> {
        [Leg::A, Leg::B].into_iter().find(|leg| {
            self.legs[*leg]
                .session
                .refresh
                .as_ref()
                .is_some_and(|r| r.branch == branch)
        })
    }

    /// A response to one of our refreshes (true if it was one).
    pub(super) fn handle_refresh_response(
        &mut self,
        now: Instant,
        branch: &str,
        response: &Response,
    ) -> bool {
        let Some(leg) = self.refresh_leg(branch) else {
            return false;
        };
        if response.status < 200 {
            return true;
        }
        let Some(refresh) = self.legs[leg].session.refresh.as_mut() else {
            return true;
        };
        let (method, sequence, target, again) = (
            refresh.method.clone(),
            refresh.sequence,
            refresh.target,
            refresh.answered,
        );
        let success = (200..300).contains(&response.status);
        if success {
            refresh.answered = true;
        }
        if method == Method::Invite && success {
            if let Some(dialog) = self.legs[leg].dialog.as_ref() {
                let ack = self.with_via(dialog.ack(sequence), target);
                self.actions.push_back(Action::SendRequest {
                    request: ack,
                    target,
                });
            }
            // Our SDP went again as the offer; the answer may carry a new key.
            if let (false, Some(answer)) = (again, response.sdp()) {
                self.take_answer(leg, answer);
            }
        }
        if again || self.state != State::Answered {
            return true;
        }
        let Some(mut timer) = self.legs[leg].session.timer else {
            return true;
        };
        match response.status {
            200..=299 => {
                if let Some(settings) = self.settings.session_timers {
                    let (interval, refresher) =
                        negotiate_as_uac(response, timer.interval, &settings);
                    timer.interval = interval;
                    timer.refresher = refresher;
                }
                timer.since = now;
                self.legs[leg].session.timer = Some(timer);
                if method == Method::Update {
                    self.legs[leg].session.refresh = None;
                }
                self.arm_session(leg);
            }
            422 => {
                // §7.3 (for refreshes as for the INVITE): ask again with the peer's Min-SE, if
                // it is larger; otherwise the peer makes no sense and is tried again later.
                match session_timer::min_se(response.headers.get("Min-SE")) {
                    Some(floor) if floor > timer.interval => {
                        timer.interval = floor;
                        self.legs[leg].session.timer = Some(timer);
                        self.send_refresh(leg);
                    }
                    _ => self.retry_refresh(now, leg, timer),
                }
            }
            405 | 501 if method == Method::Update => {
                // It does not take UPDATE after all: re-INVITE.
                timer.update = false;
                self.legs[leg].session.timer = Some(timer);
                self.send_refresh(leg);
            }
            408 | 481 => self.session_dead(leg, "session refresh failed"),
            _ => self.retry_refresh(now, leg, timer),
        }
        true
    }

    /// 491 (glare), 500...: the session is alive; try again shortly, within it.
    fn retry_refresh(&mut self, now: Instant, leg: Leg, timer: SessionTimer) {
        if self.legs[leg]
            .session
            .refresh
            .as_ref()
            .is_some_and(|r| r.method == Method::Update || !r.answered)
        {
            self.legs[leg].session.refresh = None;
        }
        let retry = now + RETRY;
        if retry < timer.expires() {
            self.arm(timer_of(leg), Some(retry));
        } else {
            self.session_dead(leg, "session refresh failed");
        }
    }

    /// Our refresh timed out (Timer B/F): the peer is gone (true if it was a refresh).
    pub(super) fn handle_refresh_timeout(&mut self, branch: &str) -> bool {
        let Some(leg) = self.refresh_leg(branch) else {
            return false;
        };
        self.legs[leg].session.refresh = None;
        if self.state == State::Answered {
            self.session_dead(leg, "session refresh timed out");
        }
        true
    }

    /// `leg`'s dialog is dead (§10): BYE; in a conference the others stay, as when it hangs up.
    fn session_dead(&mut self, leg: Leg, reason: &str) {
        tracing::info!(call = %self.id, ?leg, reason, "dialog dead");
        self.set_session(leg, None);
        if self.has_guests() {
            if let Some(dialog) = self.legs[leg].dialog.take() {
                let target = self.legs[leg].target;
                let credentials = self.leg_outbound(leg);
                self.bye_dialog_with_reason(dialog, target, credentials, Some(reason));
            }
            self.leg_left(leg);
        } else {
            self.hang_up(None, EndedBy::Gateway, reason);
        }
    }
}

/// What a 422 asks of `attempt`: its route index, INVITE and target, and the interval to ask
/// again with; None if it was retried once already, asked no less already, or the interval is
/// below our own Min-SE.
fn retry_interval(
    settings: Option<SessionTimerSettings>,
    attempt: Option<&Attempt>,
    response: &Response,
) -> Option<(usize, Request, Target, Duration)> {
    let settings = settings?;
    let floor = session_timer::min_se(response.headers.get("Min-SE"))?;
    let attempt = attempt?;
    let asked = SessionExpires::of(&attempt.invite.headers).map(|s| s.interval);
    if attempt.session_retried || asked.is_some_and(|a| floor <= a) || floor < settings.min_se {
        return None;
    }
    Some((
        attempt.peer_index,
        attempt.invite.clone(),
        attempt.target,
        floor,
    ))
}

/// Session-Expires (and Require: timer when the peer is to refresh, §9) for a 2xx of ours.
fn add_response_headers(headers: &mut Headers, timer: &SessionTimer) {
    headers.push("Session-Expires", timer.response_header());
    if timer.refresher == Refresher::Peer {
        headers.push("Require", "timer");
    }
}
