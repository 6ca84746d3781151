//! Outbound registration (RFC 3261 §10): the gateway binds its contact at a peer acting as
//! registrar, so that a carrier's calls for the gateway's account reach it. One sans-IO
//! [`Registrant`] per registering peer: answers and a clock in, REGISTER requests and
//! [`Event`]s out.
//!
//! Call order: [`Registrant::new`]; then, whenever [`Registrant::poll_timeout`] is due,
//! [`Registrant::handle_timeout`]; after that and after each `handle_*`,
//! [`Registrant::poll_request`] for the REGISTER to send now, if any. A final answer goes to
//! [`Registrant::handle_response`], a transaction timeout to [`Registrant::handle_no_answer`];
//! [`Registrant::unregister`] at shutdown.
//!
//! The rules, each written once here:
//! - every REGISTER has the same Call-ID and the next CSeq (§10.2.4, "during a single boot
//!   cycle"), From = To = the address of record, the Request-URI the registrar's domain (§10.2);
//! - a 401/407 is answered once with the peer's credentials (§22.2), once more when the
//!   challenge says `stale=true` (RFC 7616 §3.3); a further challenge is a failure;
//! - a 423 is answered once with its `Min-Expires` (§10.2.8, §10.3 step 7);
//! - the grant is the `expires` of our Contact in the 2xx, else its Expires header, else what
//!   we asked (§10.2.4); the binding is refreshed at half the grant;
//! - a failure (any other answer, no answer) is retried after [`FIRST_RETRY`], doubling up to
//!   [`MAX_RETRY`]; a binding stays registered until its grant runs out;
//! - [`Registrant::unregister`] removes the binding with `Expires: 0` (§10.2.2).

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::digest_client::{authorization, challenge_of, Challenge, NonceCounts};
use super::message::{Headers, Host, Method, NameAddr, Request, Response, Uri};
use super::target::Target;
use super::transaction::via_for;
use crate::routing::credentials::OutboundCredentials;
use crate::routing::Registration;

/// The first retry after a failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Retries after failures in a row double up to this.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// The longest expiry a 423's Min-Expires may ask of us (a day, as `register_expires_secs`).
const MAX_EXPIRES: Duration = Duration::from_secs(86_400);

/// What a registration failed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The registrar answered this final status (not 2xx, not an answerable challenge).
    Refused(u16),
    /// Challenged again after our answer: the credentials are not the registrar's.
    Credentials(u16),
    /// A 423 whose Min-Expires we cannot meet (absent, not above ours, or over a day).
    IntervalTooBrief,
    /// A 2xx that does not hold our binding (granted 0).
    NotBound,
    /// No final answer before the transaction timed out (§17.1.2.2 Timer F).
    NoAnswer,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused(status) => write!(f, "the registrar answered {status}"),
            Failure::Credentials(status) => write!(
                f,
                "the registrar challenged our answer again ({status}): outbound_username or outbound_password is wrong"
            ),
            Failure::IntervalTooBrief => {
                write!(f, "423 without a Min-Expires we can meet")
            }
            Failure::NotBound => write!(f, "a 2xx without our contact bound"),
            Failure::NoAnswer => write!(f, "no answer from the registrar"),
        }
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A REGISTER succeeded (the first or a refresh); the binding holds for `expires`.
    Registered { expires: Duration, refresh: bool },
    /// A REGISTER failed; the next one goes in `retry_in`.
    Failed {
        failure: Failure,
        retry_in: Duration,
    },
    /// The grant ran out before a refresh succeeded: no longer registered.
    Expired,
    /// The un-REGISTER was answered (or gave up): nothing more to send.
    Unregistered,
}

/// The REGISTER to send next, and the challenge (with the header its answer goes in) to
/// answer in it.
#[derive(Debug)]
struct Due {
    at: Instant,
    challenge: Option<(Challenge, &'static str)>,
    /// This attempt's tally so far: challenges answered (counting `challenge`), and whether
    /// a 423 was answered.
    challenges: u8,
    raised: bool,
}

impl Due {
    /// A new attempt at `at`.
    fn fresh(at: Instant) -> State {
        State::Due(Due {
            at,
            challenge: None,
            challenges: 0,
            raised: false,
        })
    }
}

#[derive(Debug)]
enum State {
    /// A REGISTER is due at `Due::at`.
    Due(Due),
    /// A REGISTER is out; only the answer on `branch` counts.
    Sent {
        branch: String,
        /// Challenges answered in this attempt (one, or two for a stale nonce).
        challenges: u8,
        /// A 423 already answered in this attempt.
        raised: bool,
    },
    /// Unregistered, or never to register again.
    Done,
}

/// The fixed parts of one peer's registration.
pub struct Binding {
    pub registration: Registration,
    pub credentials: OutboundCredentials,
    /// Our address as the peer reaches it (Via and Contact), and how requests go to it.
    pub local: SocketAddr,
    pub target: Target,
    /// The Call-ID of every REGISTER of this boot (§10.2.4) and the From tag.
    pub call_id: String,
    pub from_tag: String,
}

/// One peer's registration (module docs).
pub struct Registrant {
    binding: Binding,
    aor: Uri,
    registrar: Uri,
    contact: String,
    cseq: u32,
    /// The expiry asked for (raised by a 423).
    asked: Duration,
    state: State,
    /// Registered until then (the grant of the last success).
    until: Option<Instant>,
    failures: u32,
    unregistering: bool,
    /// RFC 7616 §3.4: the count of each nonce we answered with.
    nonces: NonceCounts,
}

impl Registrant {
    /// A registration whose first REGISTER is due at `now`.
    pub fn new(now: Instant, binding: Binding) -> Registrant {
        let registration = &binding.registration;
        let domain = match registration.domain.parse() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(registration.domain.clone()),
        };
        let aor = Uri::sip(Some(&registration.user), domain.clone(), None);
        let registrar = Uri::sip(None, domain, None);
        let host = Host::Ip(binding.local.ip());
        let contact = format!(
            "<sip:{}@{host}:{}{}>",
            registration.user,
            binding.local.port(),
            binding.target.uri_transport()
        );
        Registrant {
            asked: registration.expires,
            aor,
            registrar,
            contact,
            cseq: 0,
            state: Due::fresh(now),
            until: None,
            failures: 0,
            unregistering: false,
            nonces: NonceCounts::default(),
            binding,
        }
    }

    /// Whether the binding holds at `now`.
    pub fn is_registered(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Nothing more to send (unregistered at shutdown).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// When [`Registrant::handle_timeout`] is next due: the next REGISTER or the grant's end.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let due = match &self.state {
            State::Due(due) => Some(due.at),
            _ => None,
        };
        [due, self.until].into_iter().flatten().min()
    }

    /// The clock reached `now`: a grant that ran out is [`Event::Expired`].
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Event> {
        let until = self.until?;
        if now < until {
            return None;
        }
        self.until = None;
        (!self.unregistering).then_some(Event::Expired)
    }

    /// The REGISTER to send now, if one is due; `fresh` gives its branch and a cnonce.
    pub fn poll_request(
        &mut self,
        now: Instant,
        fresh: impl FnOnce() -> (String, String),
    ) -> Option<Request> {
        let State::Due(due) = &self.state else {
            return None;
        };
        if due.at > now {
            return None;
        }
        let (challenge, challenges, raised) = (due.challenge.clone(), due.challenges, due.raised);
        let (branch, cnonce) = fresh();
        let request = self.request(&branch, &cnonce, challenge.as_ref());
        self.state = State::Sent {
            branch,
            challenges,
            raised,
        };
        Some(request)
    }

    fn request(
        &mut self,
        branch: &str,
        cnonce: &str,
        challenge: Option<&(Challenge, &'static str)>,
    ) -> Request {
        self.cseq += 1;
        let binding = &self.binding;
        let expires = if self.unregistering {
            0
        } else {
            self.asked.as_secs()
        };
        let aor = NameAddr::new(self.aor.clone());
        let mut headers = Headers::new();
        headers.push("Via", via_for(binding.local, binding.target, branch));
        headers.push("Max-Forwards", "70");
        headers.push("From", aor.clone().with_tag(&binding.from_tag).to_string());
        headers.push("To", aor.to_string());
        headers.push("Call-ID", binding.call_id.clone());
        headers.push("CSeq", format!("{} REGISTER", self.cseq));
        headers.push("Contact", self.contact.clone());
        headers.push("Expires", expires.to_string());
        let uri = self.registrar.to_string();
        if let Some((challenge, header)) = challenge {
            let nc = self.nonces.next(&challenge.nonce);
            let request = super::digest_client::Request {
                method: "REGISTER",
                uri: &uri,
                nc,
                cnonce,
            };
            headers.push(
                header,
                authorization(challenge, &binding.credentials, request),
            );
        }
        Request {
            method: Method::Register,
            uri: self.registrar.clone(),
            headers,
            body: Bytes::new(),
        }
    }

    /// A final answer on `branch` (provisional ones and other branches are let go).
    pub fn handle_response(
        &mut self,
        now: Instant,
        branch: &str,
        response: &Response,
    ) -> Option<Event> {
        let State::Sent {
            branch: sent,
            challenges,
            raised,
        } = &self.state
        else {
            return None;
        };
        if sent != branch || response.status < 200 {
            return None;
        }
        let (challenges, raised) = (*challenges, *raised);
        if self.unregistering {
            // §10.2.2: removing the binding needs the same proof as making it.
            if let Some(challenge) = self.answerable(response, challenges) {
                self.again(now, Some(challenge), challenges, raised);
                return None;
            }
            self.state = State::Done;
            self.until = None;
            return Some(Event::Unregistered);
        }
        match response.status {
            200..=299 => match self.granted(response) {
                Some(expires) => {
                    let refresh = self.is_registered(now);
                    self.until = Some(now + expires);
                    self.failures = 0;
                    self.state = Due::fresh(now + expires / 2);
                    Some(Event::Registered { expires, refresh })
                }
                None => Some(self.fail(now, Failure::NotBound)),
            },
            401 | 407 => match self.answerable(response, challenges) {
                Some(challenge) => {
                    self.again(now, Some(challenge), challenges, raised);
                    None
                }
                None if challenges > 0 => {
                    Some(self.fail(now, Failure::Credentials(response.status)))
                }
                None => Some(self.fail(now, Failure::Refused(response.status))),
            },
            423 => match min_expires(response) {
                Some(min) if !raised && min > self.asked && min <= MAX_EXPIRES => {
                    self.asked = min;
                    self.again(now, None, 0, true);
                    None
                }
                _ => Some(self.fail(now, Failure::IntervalTooBrief)),
            },
            status => Some(self.fail(now, Failure::Refused(status))),
        }
    }

    /// The REGISTER's transaction on `branch` timed out.
    pub fn handle_no_answer(&mut self, now: Instant, branch: &str) -> Option<Event> {
        match &self.state {
            State::Sent { branch: sent, .. } if sent == branch => {}
            _ => return None,
        }
        if self.unregistering {
            self.state = State::Done;
            self.until = None;
            return Some(Event::Unregistered);
        }
        Some(self.fail(now, Failure::NoAnswer))
    }

    /// Shutdown: remove the binding now; true if an un-REGISTER is to be sent (false when
    /// there is no binding to remove, and nothing more is sent).
    pub fn unregister(&mut self, now: Instant) -> bool {
        if !self.is_registered(now) || self.is_done() {
            self.state = State::Done;
            return false;
        }
        self.unregistering = true;
        // The attempt under way, if any, is abandoned: its answer no longer counts.
        self.state = Due::fresh(now);
        true
    }

    /// The challenge of a 401/407 we may still answer in this attempt.
    fn answerable(&self, response: &Response, challenges: u8) -> Option<(Challenge, &'static str)> {
        let (challenge, header) = challenge_of(response)?;
        let allowed = if challenge.stale { 2 } else { 1 };
        (challenges < allowed).then_some((challenge, header))
    }

    /// The next REGISTER of this attempt, now.
    fn again(
        &mut self,
        now: Instant,
        challenge: Option<(Challenge, &'static str)>,
        challenges: u8,
        raised: bool,
    ) {
        let challenges = challenges + u8::from(challenge.is_some());
        self.state = State::Due(Due {
            at: now,
            challenge,
            challenges,
            raised,
        });
    }

    fn fail(&mut self, now: Instant, failure: Failure) -> Event {
        self.failures = self.failures.saturating_add(1);
        let retry_in = retry_after(self.failures);
        self.state = Due::fresh(now + retry_in);
        Event::Failed { failure, retry_in }
    }

    /// §10.2.4: our Contact's `expires`, else the Expires header, else what we asked; None
    /// for 0 (the binding is not there).
    fn granted(&self, response: &Response) -> Option<Duration> {
        let ours = NameAddr::parse(&self.contact).ok()?;
        let contact = response
            .headers
            .list("Contact")
            .filter_map(|value| NameAddr::parse(value).ok())
            .find(|contact| same_contact(&contact.uri, &ours.uri));
        let seconds = contact
            .as_ref()
            .and_then(|c| c.param("expires").flatten())
            .or_else(|| response.headers.get("Expires"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(self.asked.as_secs())
            // A registrar's grant beyond a day is taken as a day (refreshed at half): an
            // absurd one must not overflow the clock.
            .min(MAX_EXPIRES.as_secs());
        (seconds > 0).then(|| Duration::from_secs(seconds))
    }
}

/// §19.1.4's comparison as far as a registrar echoes our contact: user, host and port.
fn same_contact(theirs: &Uri, ours: &Uri) -> bool {
    theirs.user == ours.user
        && theirs.host == ours.host
        && theirs.port.unwrap_or(5060) == ours.port.unwrap_or(5060)
}

fn min_expires(response: &Response) -> Option<Duration> {
    let seconds = response.headers.get("Min-Expires")?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// The wait before the next REGISTER after `failures` failures in a row (from 1).
pub fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_RETRY * 2u32.pow(doublings)).min(MAX_RETRY)
}

#[cfg(test)]
mod tests;
