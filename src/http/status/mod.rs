//! The live status page: `GET /` (the page, its script and style embedded in the binary: it
//! needs nothing from outside, for an isolated network), `GET /status.json` (the board now)
//! and `GET /status/events` (server-sent events: a `board` event whenever the board changes;
//! at most [`MAX_FEEDS`] at once, so wall screens never take the slots `/healthz` needs).
//!
//! Who sees it: a source in `[status] allow` (default the loopback addresses: bind `api.http`
//! to the management network and list it) that names the gateway by address (an IP or
//! `localhost` in `Host`: a page of another site whose name was made to point here, DNS
//! rebinding, names neither), or anyone with `[status] token`, given as `Authorization: Bearer
//! <token>` or once as `GET /?token=<token>`, which sets a cookie for [`COOKIE_DAYS`] (its
//! expiry signed with the token: not the token, and no use after the token changes) and sends
//! the browser on to `/` so the token leaves the address bar. Anyone else is refused 401; an
//! address that keeps bringing wrong tokens, 429 for a while.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;

use super::{plain, HttpServices, Source};
use crate::routing::Cidr;
use crate::workorder::auth::LoginThrottle;

pub mod board;
pub use board::{BoardFeed, BoardSources};

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/status.js");
const STYLE: &str = include_str!("page/status.css");
/// The cookie `GET /?token=` sets.
const COOKIE: &str = "hotline_status";
/// How long the cookie lets a browser in.
pub const COOKIE_DAYS: u64 = 30;
/// Status feeds open at once (of the endpoint's connections).
pub const MAX_FEEDS: usize = 16;
/// How long `/status.json` waits for a board when nobody was watching.
const FIRST_BOARD_WITHIN: Duration = Duration::from_secs(5);

/// How a request was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admitted {
    /// From an allowed network, naming the gateway by address.
    Address,
    /// With the token (`Authorization`, or the `?token=` offered).
    Token,
    /// With the cookie a token set.
    Cookie,
}

/// Who may see the page (`[status]`).
#[derive(Debug, Clone, Default)]
pub struct StatusAccess {
    /// The shared secret that opens it from anywhere.
    pub token: Option<String>,
    /// The networks that see it by address without the token.
    pub allow: Vec<Cidr>,
}

/// The page's access rules and its feed.
pub struct StatusPage {
    feed: Arc<BoardFeed>,
    /// The token's SHA-256 (compared digest to digest: a guess's length tells nothing), and
    /// the token itself, the cookies' signing key.
    token: Option<(String, String)>,
    allow: Vec<Cidr>,
    throttle: LoginThrottle,
    feeds: Arc<tokio::sync::Semaphore>,
}

impl StatusPage {
    pub fn new(access: StatusAccess, feed: Arc<BoardFeed>) -> StatusPage {
        StatusPage {
            feed,
            token: access.token.map(|t| (digest(&t), t)),
            allow: access.allow,
            throttle: LoginThrottle::default(),
            feeds: Arc::new(tokio::sync::Semaphore::new(MAX_FEEDS)),
        }
    }

    /// Whether the request may see the page, and how. `offered` is a `?token=` of `GET /`.
    fn admit(
        &self,
        source: IpAddr,
        headers: &HeaderMap,
        offered: Option<&str>,
    ) -> Result<Admitted, Refused> {
        let by_address =
            self.allow.iter().any(|network| network.contains(source)) && names_an_address(headers);
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let given = bearer.or(offered);
        if by_address && given.is_none() {
            return Ok(Admitted::Address);
        }
        let now = std::time::Instant::now();
        if !by_address && !self.throttle.allows(source, now) {
            return Err(Refused::Throttled);
        }
        if let Some((hash, key)) = &self.token {
            // A token offered from an allowed network still makes its cookie (and leaves the
            // address bar).
            if given.is_some_and(|t| same(&digest(t), hash)) {
                return Ok(Admitted::Token);
            }
            if by_address {
                return Ok(Admitted::Address);
            }
            let mut cookies = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='));
            if cookies.any(|c| cookie_holds(c, key, unix_secs())) {
                return Ok(Admitted::Cookie);
            }
        } else if by_address {
            return Ok(Admitted::Address);
        }
        // A wrong token is a guess; a stale cookie (the token changed) is none.
        if given.is_some() {
            self.throttle.failed(source, now);
        }
        Err(Refused::NoToken)
    }
}

/// Whether the request names the gateway by address (`Host` an IP, or `localhost`); no Host
/// (or none readable) does not.
fn names_an_address(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

fn digest(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The cookie's signature of `expires` (Unix seconds) under `key` (the token).
fn signature(key: &str, expires: u64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
        return String::new();
    };
    mac.update(format!("hotline-status:{expires}").as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// A cookie value good until `expires`: `EXPIRES.SIGNATURE`.
fn cookie_until(key: &str, expires: u64) -> String {
    format!("{expires}.{}", signature(key, expires))
}

/// Whether `value` is a cookie `key` signed that has not expired at `now`.
fn cookie_holds(value: &str, key: &str, now: u64) -> bool {
    let Some((expires, signed)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<u64>() else {
        return false;
    };
    expires > now && same(signed, &signature(key, expires))
}

/// Why a request may not see the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    NoToken,
    /// Too many wrong tokens from its address lately.
    Throttled,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut refusal = match self {
            Refused::Throttled => plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many wrong tokens from this address: wait a minute\n",
            ),
            Refused::NoToken => plain(
                StatusCode::UNAUTHORIZED,
                "the status page needs its token ([status] token): open /?token=<token> once, or send Authorization: Bearer <token>\n",
            ),
        };
        if self == Refused::NoToken {
            refusal
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        guarded(refusal)
    }
}

/// Equal, in a time that does not tell how much of a guess was right.
fn same(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

pub(super) fn routes(page: Arc<StatusPage>) -> axum::Router<HttpServices> {
    axum::Router::new()
        .route("/", get(index))
        .route(
            "/status/status.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
        .route(
            "/status/status.css",
            get(|| async { asset("text/css", STYLE) }),
        )
        .route("/status.json", get(snapshot))
        .route("/status/events", get(events))
        .layer(Extension(page))
}

/// The page's own headers: nothing from elsewhere runs in it, it is framed nowhere, kept in no
/// cache.
fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The script and the style: nothing in them is secret, so they need no token.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    guarded(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn index(
    Extension(page): Extension<Arc<StatusPage>>,
    Extension(Source(source)): Extension<Source>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let offered = query.get("token").map(String::as_str);
    let admitted = match page.admit(source, &headers, offered) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    if let (Some(_), Admitted::Token, Some((_, key))) = (offered, admitted, &page.token) {
        // Into the cookie, and out of the address bar (and the screen's history). Lax: the
        // first visit may come by a link from the centre's wiki.
        let expires = unix_secs() + COOKIE_DAYS * 86_400;
        let cookie = format!(
            "{COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
            cookie_until(key, expires),
            COOKIE_DAYS * 86_400
        );
        let mut response = StatusCode::SEE_OTHER.into_response();
        let headers = response.headers_mut();
        headers.insert(header::LOCATION, HeaderValue::from_static("/"));
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            headers.insert(header::SET_COOKIE, cookie);
        }
        return guarded(response);
    }
    guarded(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response())
}

async fn snapshot(
    Extension(page): Extension<Arc<StatusPage>>,
    Extension(Source(source)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = page.admit(source, &headers, None) {
        return refusal.into_response();
    }
    let mut boards = page.feed.watch();
    let first = tokio::time::timeout(FIRST_BOARD_WITHIN, boards.wait_for(|b| !b.is_empty()));
    let board = match first.await {
        Ok(Ok(board)) => Arc::clone(&board),
        _ => return plain(StatusCode::SERVICE_UNAVAILABLE, "no board yet\n"),
    };
    guarded(
        (
            [(header::CONTENT_TYPE, "application/json")],
            board.to_string(),
        )
            .into_response(),
    )
}

async fn events(
    Extension(page): Extension<Arc<StatusPage>>,
    Extension(Source(source)): Extension<Source>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = page.admit(source, &headers, None) {
        return refusal.into_response();
    }
    let Ok(feed) = Arc::clone(&page.feeds).try_acquire_owned() else {
        let busy = format!("{MAX_FEEDS} status feeds are open: close one\n");
        return guarded(plain(StatusCode::SERVICE_UNAVAILABLE, busy));
    };
    let boards = WatchStream::new(page.feed.watch())
        .filter(|board| !board.is_empty())
        .map(move |board| {
            // Held while the stream lives.
            let _feed = &feed;
            Ok::<_, Infallible>(Event::default().event("board").data(board.as_str()))
        });
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(15));
    guarded(Sse::new(boards).keep_alive(keep_alive).into_response())
}

#[cfg(test)]
mod tests;
