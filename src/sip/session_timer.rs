//! RFC 4028 session timers: the Session-Expires / Min-SE negotiation and when a leg's refresh
//! or expiry is due. Pure; the call model keeps one [`SessionTimer`] per leg and does the
//! sending.
//!
//! The gateway is a B2BUA, so each leg negotiates on its own. Where it may choose (§9: the
//! caller did not say), the gateway refreshes itself: a refresh that times out or gets
//! 408/481 is how a peer that vanished mid-call is found (§10).

use std::time::{Duration, Instant};

use super::message::{Headers, Request, Response};

/// §4, §5: no session interval below this.
pub const MIN_SE_FLOOR: Duration = Duration::from_secs(90);

/// No session interval above this, whatever a peer asks or grants (a day: the arithmetic on
/// clock readings stays far from overflow, and a dead dialog is still found the same day).
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// Who sends the refreshes on a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Gateway,
    Peer,
}

/// The `refresher` parameter: which side of the transaction that carried it refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Uac,
    Uas,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Uac => "uac",
            Role::Uas => "uas",
        }
    }
}

/// A Session-Expires header field value (§4): `1800;refresher=uac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    pub interval: Duration,
    pub refresher: Option<Role>,
}

impl SessionExpires {
    /// None for anything but delta-seconds with optional parameters.
    pub fn parse(value: &str) -> Option<SessionExpires> {
        let mut parts = value.split(';');
        let seconds: u64 = parts.next()?.trim().parse().ok()?;
        let mut refresher = None;
        for param in parts {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("refresher") {
                refresher = match value.trim().to_ascii_lowercase().as_str() {
                    "uac" => Some(Role::Uac),
                    "uas" => Some(Role::Uas),
                    _ => None,
                };
            }
        }
        Some(SessionExpires {
            interval: Duration::from_secs(seconds).min(MAX_INTERVAL),
            refresher,
        })
    }

    /// The Session-Expires of a request's or response's `headers`.
    pub fn of(headers: &Headers) -> Option<SessionExpires> {
        headers
            .get("Session-Expires")
            .and_then(SessionExpires::parse)
    }

    pub fn header(interval: Duration, refresher: Role) -> String {
        format!("{};refresher={}", interval.as_secs(), refresher.as_str())
    }
}

/// Min-SE (§5): delta-seconds.
pub fn min_se(value: Option<&str>) -> Option<Duration> {
    let seconds: u64 = value?.split(';').next()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_INTERVAL))
}

/// `sip.session_expires_secs` and `sip.min_se_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimerSettings {
    /// The interval the gateway asks for and grants at most.
    pub session_expires: Duration,
    /// The smallest interval it accepts (never below [`MIN_SE_FLOOR`]).
    pub min_se: Duration,
}

/// What the gateway, as UAS of an INVITE or a refresh, makes of its Session-Expires (§9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UasDecision {
    /// Answer 2xx with this interval and refresher.
    Use {
        interval: Duration,
        refresher: Refresher,
    },
    /// Answer 422 with this Min-SE: the interval asked for is too short for us.
    TooSmall { min_se: Duration },
}

/// §9: the gateway may shorten the interval asked for, not below the request's Min-SE; where
/// the request leaves the refresher open, the gateway takes it (and must, when the caller does
/// not support timers).
pub fn negotiate_as_uas(request: &Request, settings: &SessionTimerSettings) -> UasDecision {
    let floor = min_se(request.headers.get("Min-SE"))
        .unwrap_or(MIN_SE_FLOOR)
        .max(MIN_SE_FLOOR);
    let Some(asked) = SessionExpires::of(&request.headers) else {
        return UasDecision::Use {
            interval: settings.session_expires.max(floor),
            refresher: Refresher::Gateway,
        };
    };
    if asked.interval < settings.min_se {
        return UasDecision::TooSmall {
            min_se: settings.min_se,
        };
    }
    let supports_timer = request
        .headers
        .list("Supported")
        .any(|tag| tag.eq_ignore_ascii_case("timer"));
    let refresher = match asked.refresher {
        Some(Role::Uac) if supports_timer => Refresher::Peer,
        _ => Refresher::Gateway,
    };
    UasDecision::Use {
        interval: asked.interval.min(settings.session_expires).max(floor),
        refresher,
    }
}

/// §7.2: the interval and refresher a 2xx to the gateway's INVITE (or refresh) settled on.
/// Without Session-Expires the peer does not do session timers; the gateway refreshes anyway,
/// at its own interval: the refresh is then its check that the peer is still there.
pub fn negotiate_as_uac(
    response: &Response,
    asked: Duration,
    settings: &SessionTimerSettings,
) -> (Duration, Refresher) {
    match SessionExpires::of(&response.headers) {
        Some(granted) => {
            let refresher = match granted.refresher {
                Some(Role::Uas) => Refresher::Peer,
                _ => Refresher::Gateway,
            };
            // §9: the UAS may lower the interval asked for, never raise it.
            (
                granted
                    .interval
                    .clamp(MIN_SE_FLOOR, asked.max(MIN_SE_FLOOR)),
                refresher,
            )
        }
        None => (asked.max(settings.min_se), Refresher::Gateway),
    }
}

/// One leg's session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    pub interval: Duration,
    pub refresher: Refresher,
    /// The last refresh (or the answer).
    pub since: Instant,
    /// Refresh with UPDATE (the peer allows it; RFC 3311) rather than a re-INVITE.
    pub update: bool,
}

impl SessionTimer {
    /// When the next thing is due: our refresh at half the interval (§10), or, when the peer
    /// refreshes, the BYE shortly before expiry (the minimum of 32 s and a third of the
    /// interval before it, §10).
    pub fn due(&self) -> Instant {
        match self.refresher {
            Refresher::Gateway => self.since + self.interval / 2,
            Refresher::Peer => {
                self.since + self.interval - Duration::from_secs(32).min(self.interval / 3)
            }
        }
    }

    /// The session's end: an unanswered refresh of ours has failed by then.
    pub fn expires(&self) -> Instant {
        self.since + self.interval
    }

    /// The Session-Expires of a 2xx the gateway sends (the refresher as the request's UAC/UAS).
    pub fn response_header(&self) -> String {
        let role = match self.refresher {
            Refresher::Gateway => Role::Uas,
            Refresher::Peer => Role::Uac,
        };
        SessionExpires::header(self.interval, role)
    }
}

/// Whether a peer's Allow (in its INVITE or 2xx) lists UPDATE.
pub fn allows_update(allow: impl Iterator<Item = impl AsRef<str>>) -> bool {
    allow
        .into_iter()
        .any(|method| method.as_ref().eq_ignore_ascii_case("UPDATE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Message};

    fn settings() -> SessionTimerSettings {
        SessionTimerSettings {
            session_expires: Duration::from_secs(1800),
            min_se: Duration::from_secs(90),
        }
    }

    fn invite(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:12345@gw SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\
             From: <sip:a@a>;tag=1\r\nTo: <sip:12345@gw>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn ok(extra: &str) -> Response {
        let text = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\
             From: <sip:a@a>;tag=1\r\nTo: <sip:12345@gw>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()) {
            Ok(Message::Response(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_values_parse_with_and_without_refresher() {
        assert_eq!(
            SessionExpires::parse("1800;refresher=UAC"),
            Some(SessionExpires {
                interval: Duration::from_secs(1800),
                refresher: Some(Role::Uac)
            })
        );
        assert_eq!(
            SessionExpires::parse(" 90 ").map(|s| (s.interval.as_secs(), s.refresher)),
            Some((90, None))
        );
        assert_eq!(SessionExpires::parse("soon"), None);
        assert_eq!(min_se(Some("120")), Some(Duration::from_secs(120)));
    }

    #[test]
    fn as_uas_the_gateway_refreshes_unless_a_timer_aware_caller_asks_to() {
        let s = settings();
        // No Session-Expires at all: we use ours and refresh.
        assert_eq!(
            negotiate_as_uas(&invite(""), &s),
            UasDecision::Use {
                interval: Duration::from_secs(1800),
                refresher: Refresher::Gateway
            }
        );
        // A caller asking to refresh itself, supporting timers: it does, at a shortened
        // interval if it asked for more than ours.
        assert_eq!(
            negotiate_as_uas(
                &invite("Supported: timer\r\nSession-Expires: 3600;refresher=uac\r\n"),
                &s
            ),
            UasDecision::Use {
                interval: Duration::from_secs(1800),
                refresher: Refresher::Peer
            }
        );
        // refresher=uac without Supported: timer cannot be honoured (§9): we refresh.
        assert_eq!(
            negotiate_as_uas(&invite("Session-Expires: 600;refresher=uac\r\n"), &s),
            UasDecision::Use {
                interval: Duration::from_secs(600),
                refresher: Refresher::Gateway
            }
        );
        // Too short for our Min-SE: 422.
        let strict = SessionTimerSettings {
            min_se: Duration::from_secs(300),
            ..s
        };
        assert_eq!(
            negotiate_as_uas(&invite("Session-Expires: 120\r\n"), &strict),
            UasDecision::TooSmall {
                min_se: Duration::from_secs(300)
            }
        );
        // Never below the caller's own Min-SE when we shorten.
        let short = SessionTimerSettings {
            session_expires: Duration::from_secs(90),
            ..s
        };
        assert_eq!(
            negotiate_as_uas(&invite("Session-Expires: 1800\r\nMin-SE: 600\r\n"), &short),
            UasDecision::Use {
                interval: Duration::from_secs(600),
                refresher: Refresher::Gateway
            }
        );
    }

    #[test]
    fn as_uac_the_answer_decides_and_silence_means_we_refresh() {
        let s = settings();
        let asked = Duration::from_secs(1800);
        assert_eq!(
            negotiate_as_uac(&ok("Session-Expires: 900;refresher=uas\r\n"), asked, &s),
            (Duration::from_secs(900), Refresher::Peer)
        );
        assert_eq!(
            negotiate_as_uac(&ok("Session-Expires: 900;refresher=uac\r\n"), asked, &s),
            (Duration::from_secs(900), Refresher::Gateway)
        );
        assert_eq!(
            negotiate_as_uac(&ok(""), asked, &s),
            (asked, Refresher::Gateway)
        );
    }

    #[test]
    fn huge_values_are_capped_not_trusted() {
        let s = settings();
        let huge = "18446744073709551615";
        assert_eq!(
            negotiate_as_uas(&invite(&format!("Min-SE: {huge}\r\n")), &s),
            UasDecision::Use {
                interval: MAX_INTERVAL,
                refresher: Refresher::Gateway
            }
        );
        let asked = Duration::from_secs(1800);
        assert_eq!(
            negotiate_as_uac(
                &ok(&format!("Session-Expires: {huge};refresher=uas\r\n")),
                asked,
                &s
            ),
            (asked, Refresher::Peer),
            "a UAS may only lower the interval"
        );
        let timer = SessionTimer {
            interval: MAX_INTERVAL,
            refresher: Refresher::Peer,
            since: Instant::now(),
            update: false,
        };
        assert!(timer.expires() > timer.due());
    }

    #[test]
    fn refreshes_are_due_at_half_and_the_peers_shortly_before_expiry() {
        let now = Instant::now();
        let mut timer = SessionTimer {
            interval: Duration::from_secs(1800),
            refresher: Refresher::Gateway,
            since: now,
            update: true,
        };
        assert_eq!(timer.due(), now + Duration::from_secs(900));
        assert_eq!(timer.expires(), now + Duration::from_secs(1800));
        assert_eq!(timer.response_header(), "1800;refresher=uas");
        timer.refresher = Refresher::Peer;
        assert_eq!(timer.due(), now + Duration::from_secs(1800 - 32));
        assert_eq!(timer.response_header(), "1800;refresher=uac");
        timer.interval = Duration::from_secs(90);
        assert_eq!(timer.due(), now + Duration::from_secs(60));
    }
}
