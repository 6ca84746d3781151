//! One leg's SRTP contexts across its negotiations (RFC 3711, keys from SDES, RFC 4568):
//! which key protects our stream now, which keys the endpoint may protect its stream with,
//! and the keys retired for room, which never protect again. Pure: no sockets, no clock.

use crate::media::srtp;

/// One leg's SRTP: a sender context for each key we protected our stream to it with and a
/// receiver context for each key its endpoint used, kept for the side's life and the newest
/// in use. A key that comes back (the agent's, after a transfer target's early media) goes on
/// with its indexes and replay window: a key, SSRC and index never encrypt twice
/// (RFC 3711 §9.1), and a re-INVITE repeating the keys continues the streams (RFC 4568 §7.1.4).
pub(super) struct SrtpSession {
    /// The leg's last negotiation had keys (a plain one keeps the contexts, unused).
    active: bool,
    senders: Vec<(srtp::MasterKey, srtp::Sender)>,
    /// By the endpoint's key alone: its MKI is not authenticated, so a change of MKI length
    /// keeps the replay window.
    receivers: Vec<(srtp::MasterKey, srtp::Receiver)>,
    /// Our keys whose contexts were given up for room: never used again.
    retired: Vec<srtp::MasterKey>,
    /// The key in use is a retired one: nothing is sent.
    muted: bool,
}

/// Contexts kept per side and direction (each new key is a signalling exchange: a transfer
/// attempt, a re-INVITE), the least recently used given up first.
const MAX_KEYS: usize = 16;
/// Retired keys remembered per side, the oldest forgotten first (our keys are fresh from the
/// CSPRNG, so only a key the call model keeps, like an agent's, can come back).
const MAX_RETIRED: usize = 64;

impl SrtpSession {
    /// The contexts for the leg's new negotiation.
    pub(super) fn update(
        current: Option<Box<SrtpSession>>,
        keys: Option<srtp::Keys>,
    ) -> Option<Box<Self>> {
        let Some(keys) = keys else {
            return current.map(|mut session| {
                session.active = false;
                session
            });
        };
        let mut session = current.unwrap_or_else(|| {
            Box::new(SrtpSession {
                active: true,
                senders: Vec::new(),
                receivers: Vec::new(),
                retired: Vec::new(),
                muted: false,
            })
        });
        session.active = true;
        session.muted = false;
        match session.senders.iter().position(|(k, _)| *k == keys.ours) {
            Some(at) => {
                let (key, mut sender) = session.senders.remove(at);
                sender.set_suite(keys.suite);
                session.senders.push((key, sender));
            }
            None if session.retired.contains(&keys.ours) => {
                tracing::warn!("an SRTP key whose indexes are forgotten; not sending with it");
                session.muted = true;
            }
            None => {
                if session.senders.len() == MAX_KEYS {
                    let (old, _) = session.senders.remove(0);
                    if session.retired.len() == MAX_RETIRED {
                        session.retired.remove(0);
                    }
                    session.retired.push(old);
                }
                let sender = srtp::Sender::new(keys.suite, &keys.ours);
                session.senders.push((keys.ours, sender));
            }
        }
        match session
            .receivers
            .iter()
            .position(|(k, _)| *k == keys.theirs)
        {
            Some(at) => {
                let entry = session.receivers.remove(at);
                session.receivers.push(entry);
            }
            None => {
                if session.receivers.len() == MAX_KEYS {
                    session.receivers.remove(0);
                }
                let receiver = srtp::Receiver::new(keys.suite, &keys.theirs, keys.their_mki);
                session.receivers.push((keys.theirs, receiver));
            }
        }
        if let Some((_, receiver)) = session.receivers.last_mut() {
            receiver.set_suite(keys.suite);
            receiver.set_mki(keys.their_mki);
        }
        Some(session)
    }

    /// Authenticates and decrypts a packet from the endpoint in place: its plaintext length.
    pub(super) fn unprotect(&mut self, packet: &mut [u8]) -> Result<usize, srtp::SrtpError> {
        let Some((_, receiver)) = self.receivers.last_mut() else {
            return Err(srtp::SrtpError::Authentication);
        };
        if is_rtcp(packet) {
            receiver.unprotect_rtcp(packet)
        } else {
            receiver.unprotect_rtp(packet)
        }
    }

    /// The context our stream to the endpoint is protected with now.
    fn sender(&mut self) -> Option<&mut srtp::Sender> {
        if self.muted {
            return None;
        }
        self.senders.last_mut().map(|(_, sender)| sender)
    }
}

/// RTCP by its packet type (RFC 5761 §4), read from the header SRTP leaves in the clear.
pub(super) fn is_rtcp(packet: &[u8]) -> bool {
    packet.get(1).is_some_and(|t| (192..=223).contains(t))
}
impl SrtpSession {
    /// Whether the leg's last negotiation had keys.
    pub(super) fn is_active(&self) -> bool {
        self.active
    }

    /// Copies `packet` into `out` and protects it there with the context of our stream:
    /// the protected length, or None when nothing may be sent (a retired key is in use, the
    /// index space is used up, or `out` has no room).
    pub(super) fn protect(&mut self, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        let sender = self.sender()?;
        out.get_mut(..packet.len())?.copy_from_slice(packet);
        if is_rtcp(packet) {
            sender.protect_rtcp(out, packet.len())
        } else {
            sender.protect_rtp(out, packet.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ours: u8, theirs: u8, suite: srtp::Suite) -> Option<srtp::Keys> {
        Some(srtp::Keys {
            suite,
            ours: srtp::MasterKey([ours; 30]),
            theirs: srtp::MasterKey([theirs; 30]),
            their_mki: 0,
        })
    }

    /// Sends sequence number `sequence` of our stream through the side's sender.
    fn protect(session: &mut SrtpSession, sequence: u16) -> Option<usize> {
        let mut buffer = [0u8; 256];
        buffer[..12].copy_from_slice(&[0x80, 8, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        buffer[2..4].copy_from_slice(&sequence.to_be_bytes());
        session.sender()?.protect_rtp(&mut buffer, 172)
    }

    /// The agent's key comes back after a transfer target's (early media, then the target
    /// failed), and after a plain spell and a suite change: its context goes on, so the
    /// indexes it used stay used.
    #[test]
    fn a_key_that_comes_back_keeps_its_indexes() {
        use srtp::Suite::{AesCm128HmacSha1_32, AesCm128HmacSha1_80};
        let mut session = SrtpSession::update(None, keys(1, 2, AesCm128HmacSha1_80));
        let Some(s) = session.as_deref_mut() else {
            panic!("no session");
        };
        assert!(protect(s, 10).is_some());
        session = SrtpSession::update(session, keys(5, 6, AesCm128HmacSha1_80));
        let Some(s) = session.as_deref_mut() else {
            panic!("no session");
        };
        assert!(protect(s, 10).is_some(), "another key: its own indexes");
        session = SrtpSession::update(session, None);
        assert!(session.as_ref().is_some_and(|s| !s.active));
        session = SrtpSession::update(session, keys(1, 2, AesCm128HmacSha1_32));
        let Some(s) = session.as_deref_mut() else {
            panic!("no session");
        };
        assert!(s.active);
        assert_eq!(protect(s, 10), None, "10 was sent under key 1");
        assert_eq!(protect(s, 11), Some(172 + 4), "the 32-bit tag now");
        assert_eq!(s.senders.len(), 2);
        assert_eq!(s.receivers.len(), 2);
    }

    /// Beyond the contexts kept, the oldest of our keys is retired: it never protects again.
    #[test]
    fn a_retired_key_sends_nothing() {
        use srtp::Suite::AesCm128HmacSha1_80;
        let mut session = None;
        for key in 0..=MAX_KEYS as u8 {
            session = SrtpSession::update(session, keys(key, 200, AesCm128HmacSha1_80));
        }
        session = SrtpSession::update(session, keys(0, 200, AesCm128HmacSha1_80));
        let Some(s) = session.as_deref_mut() else {
            panic!("no session");
        };
        assert_eq!(protect(s, 1), None);
        session = SrtpSession::update(session, keys(99, 200, AesCm128HmacSha1_80));
        assert!(session
            .as_deref_mut()
            .is_some_and(|s| protect(s, 1).is_some()));
    }
}
