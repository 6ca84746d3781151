//! The two legs of a call as one type: leg A (the caller's, later whoever took it over) and
//! leg B (ours to the route's peers, later whoever took it over), each with its dialog, party,
//! media and session timer. A newcomer (a transfer target that answered, a conference guest)
//! takes a leg over in one place, [`CallLeg::take_over`].

use std::net::SocketAddr;
use std::ops::{Index, IndexMut};
use std::sync::Arc;

use crate::media::{Leg, LegMedia, Party};
use crate::routing::Peer;
use crate::sip::dialog::Dialog;
use crate::sip::sdp::{Origin, SessionDescription};
use crate::sip::target::Target;
use crate::sip::transaction::DialogKey;

use super::fork::Attempt;
use super::session::LegSession;
use crate::call::transfer::CallerIdentity;

/// One leg of the call, whoever its party is now.
pub(super) struct CallLeg {
    /// Call-ID and our tag of the leg's dialog.
    pub(super) call_id: String,
    pub(super) tag: String,
    pub(super) dialog: Option<Dialog>,
    /// Where requests in the leg's dialog go.
    pub(super) target: Target,
    /// The party's peer (leg B's: the current attempt's until one answers).
    pub(super) peer: Option<Arc<Peer>>,
    /// Who the party is, as the other leg's transfer targets are shown.
    pub(super) identity: CallerIdentity,
    /// Our INVITE that made the dialog when the gateway is its UAC (leg B, or a leg a newcomer
    /// took over): a retransmitted 2xx is acknowledged again (§13.2.2.4).
    pub(super) uac_invite: Option<Attempt>,
    /// Our offer, when the gateway is the dialog's UAC.
    pub(super) offer: Option<SessionDescription>,
    /// The party's media as last negotiated.
    pub(super) endpoint: Option<LegMedia>,
    /// Which of the relay's parties this leg is (a conference guest's once it took the leg).
    pub(super) party: Party,
    pub(super) origin: Origin,
    /// The SDP we send this leg (answer to its offer, or our offer).
    pub(super) local_sdp: Option<String>,
    /// Our RTP address on this leg.
    pub(super) media: SocketAddr,
    /// RFC 4028 session timer of the leg's dialog.
    pub(super) session: LegSession,
}

/// Who takes a leg over, with the dialog of our INVITE that it answered.
pub(super) struct Newcomer {
    pub(super) call_id: String,
    pub(super) tag: String,
    pub(super) dialog: Dialog,
    pub(super) attempt: Attempt,
    pub(super) peer: Option<Arc<Peer>>,
    /// The number we reached it at.
    pub(super) number: String,
    pub(super) endpoint: Option<LegMedia>,
    pub(super) offer: Option<SessionDescription>,
    pub(super) local_sdp: Option<String>,
    pub(super) origin: Origin,
    /// Its own party and port pair (a conference guest), or None to keep the leg's (a transfer
    /// target got the transferor's port).
    pub(super) party: Option<(Party, SocketAddr)>,
}

impl CallLeg {
    /// The key the endpoint routes the leg's in-dialog requests by.
    pub(super) fn key(&self) -> DialogKey {
        DialogKey {
            call_id: self.call_id.clone(),
            local_tag: self.tag.clone(),
        }
    }

    /// The peer's SRTP and other policy, if the leg has a peer.
    pub(super) fn peer(&self) -> Option<&Arc<Peer>> {
        self.peer.as_ref()
    }

    /// The leg's party hung up while the call goes on without it: its dialog is over and the
    /// desk seat its INVITE took (`[[peer]] max_calls`) is free for the next caller now.
    pub(super) fn party_left(&mut self) {
        self.dialog = None;
        if let Some(attempt) = self.uac_invite.as_mut() {
            attempt.seat = None;
        }
    }

    /// `newcomer` becomes the leg's party (nobody is re-INVITEd: the relay latches the new
    /// endpoint). Returns the key of the dialog the leg had, which the caller releases.
    pub(super) fn take_over(&mut self, newcomer: Newcomer) -> DialogKey {
        let old = DialogKey {
            call_id: std::mem::replace(&mut self.call_id, newcomer.call_id),
            local_tag: std::mem::replace(&mut self.tag, newcomer.tag),
        };
        self.dialog = Some(newcomer.dialog);
        self.target = newcomer.attempt.target;
        if let Some(peer) = newcomer.peer {
            self.peer = Some(peer);
        }
        self.identity = CallerIdentity::reached_at(&newcomer.number);
        self.uac_invite = Some(newcomer.attempt);
        if newcomer.offer.is_some() {
            self.offer = newcomer.offer;
        }
        self.endpoint = newcomer.endpoint;
        self.local_sdp = newcomer.local_sdp;
        self.origin = newcomer.origin;
        if let Some((party, media)) = newcomer.party {
            self.party = party;
            self.media = media;
        }
        old
    }
}

/// Legs A and B, indexed by [`Leg`].
pub(super) struct Legs(pub(super) [CallLeg; 2]);

impl Index<Leg> for Legs {
    type Output = CallLeg;

    fn index(&self, leg: Leg) -> &CallLeg {
        match leg {
            Leg::A => &self.0[0],
            Leg::B => &self.0[1],
        }
    }
}

impl IndexMut<Leg> for Legs {
    fn index_mut(&mut self, leg: Leg) -> &mut CallLeg {
        match leg {
            Leg::A => &mut self.0[0],
            Leg::B => &mut self.0[1],
        }
    }
}

impl Legs {
    /// The leg whose relay party is `party`.
    pub(super) fn of_party(&self, party: Party) -> Option<Leg> {
        [Leg::A, Leg::B]
            .into_iter()
            .find(|leg| self[*leg].party == party)
    }
}

impl super::Call {
    /// `newcomer` takes `leg` over (a transfer target that answered, a conference guest when
    /// the leg's party left). Returns the key of the leg's old dialog. The INVITE that made
    /// the old dialog is forgotten: that dialog was answered long ago and is ended.
    pub(super) fn take_leg_over(&mut self, leg: Leg, newcomer: Newcomer) -> DialogKey {
        let old = self.legs[leg].take_over(newcomer);
        match leg {
            // The caller's delayed offer is answered by nobody now.
            Leg::A => self.caller.pending_offer = None,
            Leg::B => {
                // The new party's digits start afresh.
                self.hotkeys = None;
                self.arm(super::Timer::HotkeyDigits, None);
                self.detect_agent_digits();
                let (b_peer, b_interface) = self
                    .b_peer()
                    .map(|p| (p.name.clone(), self.interface_name(p)))
                    .unwrap_or_default();
                self.actions.push_back(super::Action::Attempt {
                    b_call_id: self.legs[Leg::B].call_id.clone(),
                    b_peer,
                    b_interface,
                });
            }
        }
        old
    }
}
