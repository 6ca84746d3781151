//! The whisper (`[announcements.whisper]`): a transfer target at a receiving platform (the
//! 110 operator) that answers first hears a short prompt naming the ticket's urgency class,
//! chosen by that class, and only then the citizen. Meanwhile the citizen goes on hearing
//! the transfer announcement (or ringback); the two are bridged when the prompt has played.
//! A conference guest at such a platform hears it before it joins the call's audio.

use std::time::{Duration, Instant};

use crate::media::prompt::{Announcement, Prompt};
use crate::media::{Leg, MediaCommand, Party};

use super::{Action, Call, Timer};

/// The 12345 hotline's urgency classes of a ticket (A/B/C/D), as the work-order link carries
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrgencyClass {
    /// Class D, urgent: life or property at risk.
    D,
    /// Class A, immediate.
    A,
    /// Class B: within 5 working days.
    B,
    /// Class C: handled to a plan.
    C,
}

/// Who hears a whisper now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whispering {
    /// The transfer target that took this leg over (it and the other leg are isolated).
    Leg(Leg),
    /// A conference guest, not yet in the call's audio.
    Guest(Party),
}

/// The operator's whisper prompts, one per urgency class, and who hears them.
#[derive(Debug, Clone, Default)]
pub struct Whispers {
    /// The platforms whose answering operators hear it (empty: a transfer target or a
    /// conference guest at any platform).
    pub platforms: Vec<String>,
    pub class_d: Option<Prompt>,
    pub class_a: Option<Prompt>,
    pub class_b: Option<Prompt>,
    pub class_c: Option<Prompt>,
    /// For a call whose ticket has no class, or that has no ticket.
    pub unclassified: Option<Prompt>,
}

impl Whispers {
    /// The prompt for a call with `class` answered by an operator at `platform`.
    pub fn prompt(&self, class: Option<UrgencyClass>, platform: Option<&str>) -> Option<&Prompt> {
        let heard_there = self.platforms.is_empty()
            || platform.is_some_and(|p| self.platforms.iter().any(|q| q == p));
        if !heard_there {
            return None;
        }
        match class {
            Some(UrgencyClass::D) => self.class_d.as_ref(),
            Some(UrgencyClass::A) => self.class_a.as_ref(),
            Some(UrgencyClass::B) => self.class_b.as_ref(),
            Some(UrgencyClass::C) => self.class_c.as_ref(),
            None => self.unclassified.as_ref(),
        }
    }
}

impl Call {
    /// The urgency class of the call's ticket, as a platform attached or updated it.
    pub fn set_urgency(&mut self, class: Option<UrgencyClass>) {
        self.urgency = class;
    }

    /// The transfer target that took leg `leg` over has answered: it hears the whisper for
    /// its platform and the ticket's class first, while the citizen (the other leg) hears
    /// the transfer announcement; false if there is none (bridge now).
    pub(super) fn whisper(&mut self, now: Instant, leg: Leg) -> bool {
        let platform = self.legs[leg].peer().and_then(|p| p.platform.clone());
        let Some(prompt) = self.whisper_for(platform.as_deref()) else {
            return false;
        };
        let party = self.legs[leg].party;
        let length = prompt_length(&prompt);
        tracing::info!(call = %self.id, class = ?self.urgency, ms = prompt.duration_ms(), "whisper to the transfer target");
        // Neither hears the other until the prompt has played (the operator's first words
        // would otherwise reach the citizen, and the citizen's cut the prompt short).
        for party in [party, self.legs[leg.other()].party] {
            self.actions
                .push_back(Action::Media(MediaCommand::Isolate(party, true)));
        }
        self.actions.push_back(Action::Media(MediaCommand::Announce(
            party,
            Some(Announcement::Prompt(prompt)),
        )));
        self.announce_transfer(Some(leg.other()));
        self.whispering = Some(Whispering::Leg(leg));
        self.arm(Timer::Whisper, Some(now + length));
        true
    }

    /// A conference guest at `platform` has answered on `party`: it hears the whisper before
    /// it joins the call's audio; false if there is none (join now).
    pub(super) fn whisper_to_guest(
        &mut self,
        now: Instant,
        party: Party,
        platform: Option<&str>,
    ) -> bool {
        let Some(prompt) = self.whisper_for(platform) else {
            return false;
        };
        tracing::info!(call = %self.id, class = ?self.urgency, ms = prompt.duration_ms(), "whisper to the conference guest");
        let length = prompt_length(&prompt);
        self.actions.push_back(Action::Media(MediaCommand::Announce(
            party,
            Some(Announcement::Prompt(prompt)),
        )));
        self.whispering = Some(Whispering::Guest(party));
        self.arm(Timer::Whisper, Some(now + length));
        true
    }

    fn whisper_for(&self, platform: Option<&str>) -> Option<Prompt> {
        self.settings
            .whispers
            .prompt(self.urgency, platform)
            .cloned()
    }

    /// The whisper has played: the target and the citizen hear each other (the guest joins
    /// the call's audio, if it is still a guest).
    pub(super) fn whispered(&mut self) {
        match self.whispering.take() {
            Some(Whispering::Leg(leg)) => {
                self.actions.push_back(Action::Media(MediaCommand::Announce(
                    self.legs[leg].party,
                    None,
                )));
                self.ringback(None);
                for leg in [leg, leg.other()] {
                    self.actions.push_back(Action::Media(MediaCommand::Isolate(
                        self.legs[leg].party,
                        false,
                    )));
                }
            }
            Some(Whispering::Guest(party)) => {
                self.actions
                    .push_back(Action::Media(MediaCommand::Announce(party, None)));
                self.guest_joined(party);
            }
            None => {}
        }
    }
}

fn prompt_length(prompt: &Prompt) -> Duration {
    Duration::from_millis(prompt.duration_ms())
}
