//! What a citizen waiting with no agent on the line hears: ringback, the transfer
//! announcement while a target rings, the queue announcement while its transfer waits for a
//! desk.

use crate::media::prompt::Announcement;
use crate::media::{Leg, MediaCommand};

use super::{Action, Call};

/// What a citizen waiting with no agent left hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WaitingSound {
    Ringback,
    /// `[announcements] transfer`.
    Transfer,
    /// `[announcements] queue`: its transfer waits in the route's queue.
    Queue,
}

impl Call {
    /// Ringback to the citizen (`to`) while it waits with no agent left (a guest ringing, the
    /// number first called again); `None` stops it.
    pub(super) fn ringback(&mut self, to: Option<Leg>) {
        self.play_to_waiting(to, false);
    }

    /// The transfer announcement (`[announcements] transfer`; ringback without one) to the
    /// citizen (`to`) while a transfer target rings with no agent left.
    pub(super) fn announce_transfer(&mut self, to: Option<Leg>) {
        self.play_to_waiting(to, true);
    }

    pub(super) fn play_to_waiting(&mut self, to: Option<Leg>, announcement: bool) {
        let settings = &self.settings;
        // A transfer waiting in its route's queue: the queue announcement, when there is one.
        let prompt = match (
            &settings.queue_announcement,
            &settings.transfer_announcement,
        ) {
            (Some(queue), _) if announcement && self.transfer_queued() => {
                Some((WaitingSound::Queue, queue))
            }
            (_, Some(transfer)) if announcement => Some((WaitingSound::Transfer, transfer)),
            _ => None,
        };
        let sound = prompt.map_or(WaitingSound::Ringback, |(sound, _)| sound);
        if self.ringback == to && self.waiting_sound == sound {
            return;
        }
        let announcement = match prompt {
            Some((_, prompt)) => Announcement::Prompt(prompt.clone()),
            None => Announcement::Ringback,
        };
        self.waiting_sound = if to.is_some() {
            sound
        } else {
            WaitingSound::Ringback
        };
        if let Some(leg) = std::mem::replace(&mut self.ringback, to) {
            self.actions.push_back(Action::Media(MediaCommand::Announce(
                self.legs[leg].party,
                None,
            )));
        }
        if let Some(leg) = to {
            self.actions.push_back(Action::Media(MediaCommand::Announce(
                self.legs[leg].party,
                Some(announcement),
            )));
        }
    }
}
