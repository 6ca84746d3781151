//! DTMF on the call model: digits from SIP INFO (application/dtmf-relay, application/dtmf) and
//! from the relay's RFC 4733 detection; the agent's go through the hotkey matcher, anything
//! no hotkey takes reaches the other party the way it came.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::call::hotkey::HotkeyAction;
use crate::media::{Leg, MediaCommand, Party};
use crate::routing::credentials::OutboundCredentials;
use crate::sip::message::{Method, Request};
use crate::sip::target::Target;

use super::{Action, Call, State, Timer};
use crate::call::hotkey::{self, HotkeyMatcher};
use crate::call::transfer::Trigger;

/// How DTMF reached us, so that digits passed on go the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DigitTransport {
    /// SIP INFO with this content type.
    Info(Option<String>),
    /// RFC 4733 telephone-events in RTP.
    Rtp,
}

impl Call {
    /// A DTMF INFO (answered 200 already). From the agent's leg its digits go through the
    /// hotkey matcher; anything not taken by a hotkey reaches the other party unchanged.
    pub(super) fn handle_info(&mut self, now: Instant, leg: Leg, request: &Request) {
        let Some(digit) = hotkey::dtmf_of_info(request.content_type(), &request.body) else {
            return;
        };
        let format = request.content_type().map(str::to_string);
        if leg == Leg::B && self.b_is_agent() {
            self.digit_transport = DigitTransport::Info(format);
            self.agent_digit(now, digit);
        } else {
            self.send_dtmf_info(leg.other(), digit, format.as_deref());
        }
    }

    /// One DTMF digit from the agent's leg, however it came (SIP INFO or RFC 4733).
    pub fn handle_agent_digit(&mut self, now: Instant, digit: char) {
        self.step(now, |call| call.agent_digit(now, digit));
    }

    fn agent_digit(&mut self, now: Instant, digit: char) {
        if self.state != State::Answered || self.settings.hotkeys.is_empty() {
            self.pass_digits(Leg::B, &digit.to_string());
            return;
        }
        let settings = Arc::clone(&self.settings);
        let matcher = self.hotkeys.get_or_insert_with(|| {
            HotkeyMatcher::new(Arc::clone(&settings.hotkeys), settings.hotkey_inter_digit)
        });
        let matched = matcher.handle_digit(now, digit);
        let deadline = matcher.poll_timeout();
        self.arm(Timer::HotkeyDigits, deadline);
        self.pass_digits(Leg::B, &matched.release);
        let Some(hotkey) = matched.hotkey else {
            return;
        };
        tracing::info!(call = %self.id, dtmf = %hotkey.dtmf, target = %hotkey.target, "hotkey");
        self.actions.push_back(Action::Hotkey {
            dtmf: hotkey.dtmf.clone(),
            action: hotkey.action,
            target: hotkey.target.clone(),
        });
        match hotkey.action {
            HotkeyAction::Transfer => {
                let result =
                    self.start_transfer(now, Leg::B, &hotkey.target, Trigger::Hotkey, None);
                if let Err(error) = result {
                    tracing::info!(call = %self.id, %error, "hotkey transfer refused");
                }
            }
            HotkeyAction::Conference => {
                if let Err(error) = self.start_conference(Leg::B, &hotkey.target, Trigger::Hotkey) {
                    tracing::info!(call = %self.id, %error, "hotkey conference refused");
                }
            }
        }
    }

    /// Digits from leg `from` that no hotkey took, to the other party, the way they came.
    pub(super) fn pass_digits(&mut self, from: Leg, digits: &str) {
        if self.conferencing {
            let party = self.legs[from].party;
            for digit in digits.chars() {
                self.send_digit_to_others(party, digit);
            }
            return;
        }
        let transport = self.digit_transport.clone();
        for digit in digits.chars() {
            match &transport {
                DigitTransport::Info(format) => {
                    self.send_dtmf_info(from.other(), digit, format.as_deref())
                }
                DigitTransport::Rtp => {
                    self.actions
                        .push_back(Action::Media(MediaCommand::SendDigit(
                            self.legs[from.other()].party,
                            digit,
                        )))
                }
            }
        }
    }

    /// Whether the relay should take the agent's RFC 4733 digits out of the stream for the
    /// hotkey matcher (leg B is an agent's and hotkeys are configured).
    pub(super) fn detect_agent_digits(&mut self) {
        let on = self.b_is_agent() && !self.settings.hotkeys.is_empty();
        self.actions
            .push_back(Action::Media(MediaCommand::DetectDigits(
                self.legs[Leg::B].party,
                on,
            )));
    }

    /// A digit the relay detected in `party`'s RFC 4733 telephone-events: the agent's go to
    /// the hotkey matcher; in a conference, anyone else's are played to the other parties.
    pub fn handle_media_digit(&mut self, now: Instant, party: Party, digit: char) {
        self.step(now, |call| {
            if party == call.legs[Leg::B].party && (call.b_is_agent() || !call.conferencing) {
                call.digit_transport = DigitTransport::Rtp;
                call.agent_digit(now, digit);
            } else if call.conferencing {
                call.send_digit_to_others(party, digit);
            }
        });
    }

    /// A DTMF INFO on `leg`'s dialog, in `format` (`application/dtmf-relay` by default).
    pub(super) fn send_dtmf_info(&mut self, leg: Leg, digit: char, format: Option<&str>) {
        let target = self.legs[leg].target;
        let Some(info) = self.legs[leg]
            .dialog
            .as_mut()
            .map(|d| d.request(Method::Info))
        else {
            return;
        };
        let credentials = self.leg_outbound(leg);
        self.push_dtmf_info(info, target, credentials, digit, format);
    }

    /// Completes an INFO carrying `digit` (`application/dtmf` if `format` says so, else
    /// `application/dtmf-relay`) and sends it to `target` (a challenge to it answered with
    /// `credentials`).
    pub(super) fn push_dtmf_info(
        &mut self,
        mut info: Request,
        target: Target,
        credentials: Option<OutboundCredentials>,
        digit: char,
        format: Option<&str>,
    ) {
        let contact = self.contact(target);
        info.headers.push("Contact", contact);
        let dtmf = format.is_some_and(|f| f.trim().eq_ignore_ascii_case("application/dtmf"));
        if dtmf {
            info.headers.push("Content-Type", "application/dtmf");
            info.body = Bytes::from(digit.to_string());
        } else {
            info.headers.push("Content-Type", "application/dtmf-relay");
            info.body = Bytes::from(format!("Signal={digit}\r\nDuration=160\r\n"));
        }
        let info = self.with_via(info, target);
        self.send_in_dialog(info, target, credentials);
    }
}
