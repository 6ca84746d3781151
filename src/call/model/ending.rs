//! How a call ends: the outcome recorded once, BYE (or CANCEL and a final response) to every
//! party but the one that left, then the wait for the last answers (our BYEs and CANCELs,
//! INVITEs given up on that may still answer), bounded by the cleanup timer (64*T1), and the
//! dialogs released from the endpoint and the directory of bridged calls.

use std::time::Instant;

use crate::media::Leg;
use crate::sip::message;

use super::{Action, Call, EndedBy, Outcome, State, Timer, TIMERS};
use crate::call::directory::{DialogId, PeerDialog};

impl Call {
    /// Records how the call ended, once, and enters `Ending`.
    pub(super) fn end(
        &mut self,
        ended_by: EndedBy,
        reason: &str,
        final_status: u16,
        answered: bool,
    ) {
        if self.outcome.is_some() {
            return;
        }
        let outcome = Outcome {
            ended_by,
            reason: reason.to_string(),
            final_status,
            answered,
        };
        self.outcome = Some(outcome.clone());
        self.actions.push_back(Action::Ended(outcome));
        self.state = State::Ending;
        self.setup.stop_timers();
        self.arm(Timer::Whisper, None);
        self.whispering = None;
        self.give_up_queue(self.clock);
        self.release_desks();
    }

    /// The call is over for its parties: its seats at the desks (`max_calls`) and its place
    /// in a line are given back now, not when its last answers come.
    fn release_desks(&mut self) {
        self.setup.release_seats();
        if let Some(transfer) = self.transfer.as_mut() {
            transfer.fork.release_seats();
        }
        for guest in &mut self.guests {
            guest.fork.release_seats();
        }
        for leg in [Leg::A, Leg::B] {
            if let Some(attempt) = self.legs[leg].uac_invite.as_mut() {
                attempt.seat = None;
            }
        }
        self.queued = None;
    }

    /// After every input: an ending call finishes once leg B's INVITE has settled and our
    /// BYE/CANCELs and abandoned INVITEs are answered; until then the cleanup timer bounds the
    /// wait.
    pub(super) fn after(&mut self, now: Instant) {
        if self.state != State::Ending {
            return;
        }
        let waiting =
            !self.pending.is_empty() || self.retired.is_waiting() || self.setup.is_unsettled();
        if !waiting {
            self.finish();
        } else if self.timer(Timer::Cleanup).is_none() {
            self.arm(Timer::Cleanup, Some(now + self.settings.cleanup_timeout));
        }
    }

    /// Enters (or updates) this call's pair of dialogs in the directory of bridged calls.
    pub(super) fn announce_bridge(&mut self) {
        let (Some(a), Some(b)) = (
            self.legs[Leg::A].dialog.as_ref(),
            self.legs[Leg::B].dialog.as_ref(),
        ) else {
            return;
        };
        let caller_side = DialogId::of(a);
        let peer_side = PeerDialog {
            dialog: DialogId::of(b),
            peer: self.b_peer().map(|p| p.name.clone()).unwrap_or_default(),
        };
        if let Some(previous) = self.bridged.replace(caller_side.clone()) {
            if previous != caller_side {
                // Leg A went to a transfer target: its old dialog is gone.
                self.actions.push_back(Action::Unbridged(previous));
            }
        }
        self.actions.push_back(Action::Bridged {
            caller_side,
            peer_side,
        });
    }

    pub(super) fn finish(&mut self) {
        self.state = State::Done;
        for guest in std::mem::take(&mut self.guests) {
            self.actions
                .push_back(Action::UnregisterDialog(guest.key()));
        }
        if let Some(caller_side) = self.bridged.take() {
            self.actions.push_back(Action::Unbridged(caller_side));
        }
        self.timers = [None; TIMERS.len()];
        self.in_dialog.clear();
        self.setup.stop_timers();
        for key in std::mem::take(&mut self.released)
            .into_iter()
            .chain(std::mem::take(&mut self.stale_dialogs))
        {
            self.actions.push_back(Action::UnregisterDialog(key));
        }
        if let Some(transfer) = self.transfer.take() {
            self.actions
                .push_back(Action::UnregisterDialog(transfer.key()));
        }
        for leg in [Leg::A, Leg::B] {
            self.actions
                .push_back(Action::UnregisterDialog(self.legs[leg].key()));
        }
        self.actions.push_back(Action::Finished);
    }

    /// Ends an answered (or answering) call: BYE to every leg but `from`.
    pub(super) fn hang_up(&mut self, from: Option<Leg>, ended_by: EndedBy, reason: &str) {
        self.abandon_transfer();
        let cause = (ended_by == EndedBy::Gateway).then_some(reason);
        self.release_guests(cause);
        if self.state == State::Calling {
            // Before answer: cancel leg B, fail leg A.
            self.cancelled = true;
            let status = if ended_by == EndedBy::Gateway {
                503
            } else {
                487
            };
            if !self.caller.finalized {
                self.respond_a(status, message::reason_phrase(status), false);
            } else if from != Some(Leg::A) {
                // A queued caller, answered while it waits: BYE.
                if let Some(dialog) = self.legs[Leg::A].dialog.take() {
                    let target = self.legs[Leg::A].target;
                    let credentials = self.leg_outbound(Leg::A);
                    self.bye_dialog_with_reason(dialog, target, credentials, cause);
                }
            }
            // Still waiting: the gateway ended the wait (media timeout, no ACK, shutdown).
            self.give_up_queue(self.clock);
            self.send_cancel();
            self.end(ended_by, reason, status, false);
            return;
        }
        if self.state != State::Answered {
            return;
        }
        for leg in [Leg::A, Leg::B] {
            if from == Some(leg) {
                continue;
            }
            if let Some(dialog) = self.legs[leg].dialog.take() {
                let target = self.legs[leg].target;
                let credentials = self.leg_outbound(leg);
                self.bye_dialog_with_reason(dialog, target, credentials, cause);
            }
        }
        self.end(ended_by, reason, 200, true);
    }
}
