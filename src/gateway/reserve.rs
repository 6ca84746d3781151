//! The lane kept for 110 (`[[platform]] reserved_calls`): calls to or from a platform with a
//! reserve keep that many of `sip.max_calls`, and the media ports they need, for themselves.
//! Other calls are refused (503) once only the reserve is left, and overload control never
//! sheds a reserved platform's call ([`Priority`]). A one-button transfer to 110 inside a call
//! takes no new slot and no new port (the target takes the agent's), so a flood of 12345
//! calls never stops it; a conference guest's port comes from what the reserve keeps free.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::routing::{Peer, Router};
use crate::sip::message::Request;
use crate::sip::overload::Priority;

/// The reserved platforms and how many calls they keep.
pub struct Reserve {
    platforms: HashSet<String>,
    calls: usize,
    router: Arc<Router>,
}

impl Reserve {
    /// `platforms`: each reserved platform with its `reserved_calls` (0: none).
    pub fn new(platforms: &[(String, usize)], router: Arc<Router>) -> Reserve {
        Reserve {
            platforms: platforms
                .iter()
                .filter(|(_, calls)| *calls > 0)
                .map(|(name, _)| name.clone())
                .collect(),
            calls: platforms.iter().map(|(_, calls)| calls).sum(),
            router,
        }
    }

    /// The calls kept, all reserved platforms together.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// The media port pairs kept on each interface: a call's two legs.
    pub fn port_pairs(&self) -> usize {
        self.calls * 2
    }

    fn reserved(&self, peer: &Peer) -> bool {
        peer.platform
            .as_ref()
            .is_some_and(|platform| self.platforms.contains(platform))
    }

    /// Whether a new call from `caller` to `route` (its first peer) is a reserved platform's.
    pub fn covers(&self, caller: &Peer, route: &[Arc<Peer>]) -> bool {
        self.reserved(caller) || route.first().is_some_and(|peer| self.reserved(peer))
    }
}

impl Priority for Reserve {
    /// Only a known peer's INVITE (through a front proxy: the peer it names) is exempt: a
    /// stranger dialling 110 is shed like any other.
    fn is_priority(&self, request: &Request, source: SocketAddr) -> bool {
        if self.platforms.is_empty() {
            return false;
        }
        let Some(caller) = self.router.attributed_peer(
            source,
            || request.headers.get(crate::routing::FRONT_SOURCE_HEADER),
            false,
        ) else {
            return false;
        };
        let to = || {
            request
                .uri
                .number()
                .and_then(|number| self.router.route(&number))
                .is_some_and(|route| route.first().is_some_and(|peer| self.reserved(peer)))
        };
        self.reserved(&caller) || to()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Route, TransportKind};

    fn router() -> Arc<Router> {
        let peer = |name: &str, port: u16, platform: Option<&str>| {
            Peer::new(
                name,
                SocketAddr::from(([127, 0, 0, 1], port)),
                platform.map(str::to_string),
                TransportKind::Udp,
            )
        };
        let route = |number: &str, to: &str| Route {
            number: crate::routing::NumberPattern::Exact(number.into()),
            peers: vec![to.into()],
            record: true,
            schedule: Default::default(),
            queue: None,
        };
        Arc::new(Router::new(
            vec![
                peer("carrier", 5070, None),
                peer("hotline", 5080, Some("12345")),
                peer("police", 5090, Some("110")),
            ],
            vec![route("12345", "hotline"), route("110", "police")],
        ))
    }

    #[test]
    fn calls_to_and_from_a_reserved_platform_are_covered() {
        let router = router();
        let reserve = Reserve::new(
            &[("110".into(), 5), ("12345".into(), 0)],
            Arc::clone(&router),
        );
        assert_eq!((reserve.calls(), reserve.port_pairs()), (5, 10));
        let peer = |name: &str| router.peer_by_name(name).unwrap();
        let route = |number: &str| router.route(number).unwrap();
        assert!(reserve.covers(&peer("carrier"), route("110")));
        assert!(reserve.covers(&peer("police"), route("12345")));
        assert!(!reserve.covers(&peer("carrier"), route("12345")));
        let invite = |number: &str| {
            let text = format!(
                "INVITE sip:{number}@gw SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
                 From: <sip:139@c>;tag=1\r\nTo: <sip:{number}@gw>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            match crate::sip::message::parse(text.as_bytes()) {
                Ok(crate::sip::message::Message::Request(request)) => request,
                _ => panic!("bad request"),
            }
        };
        let carrier = SocketAddr::from(([127, 0, 0, 1], 5070));
        let police = SocketAddr::from(([127, 0, 0, 1], 5090));
        assert!(reserve.is_priority(&invite("110"), carrier));
        assert!(reserve.is_priority(&invite("12345"), police));
        assert!(!reserve.is_priority(&invite("12345"), carrier));
        let stranger = SocketAddr::from(([192, 0, 2, 66], 5060));
        assert!(
            !reserve.is_priority(&invite("110"), stranger),
            "a stranger is shed"
        );
    }
}
