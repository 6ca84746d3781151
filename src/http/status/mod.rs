//! The live status page: `GET /` (the page, its script and style embedded in the binary: it
//! needs nothing from outside, for an isolated network), `GET /status.json` (the board now)
//! and `GET /status/events` (server-sent events: a `board` event whenever the board changes).
//!
//! Who sees it: a source in `[status] allow` (default the loopback addresses: bind `api.http`
//! to the management network and list it), or anyone with `[status] token`, given as
//! `Authorization: Bearer <token>` or once as `GET /?token=<token>`, which sets a cookie (a
//! digest of the token, not the token) and sends the browser on to `/` so the token leaves
//! the address bar. Anyone else is refused 401; an address that keeps bringing wrong tokens,
//! 429 for a while.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;

use super::{plain, HttpServices, Source};
use crate::config::StatusConfig;
use crate::routing::Cidr;
use crate::workorder::auth::LoginThrottle;

pub mod board;
pub use board::{BoardFeed, BoardSources};

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/status.js");
const STYLE: &str = include_str!("page/status.css");
/// The cookie `GET /?token=` sets.
const COOKIE: &str = "hotline_status";
/// How long `/status.json` waits for a board when nobody was watching.
const FIRST_BOARD_WITHIN: Duration = Duration::from_secs(5);

/// The page's access rules and its feed.
pub struct StatusPage {
    feed: Arc<BoardFeed>,
    /// The token's digest, as the cookie holds it.
    token: Option<(String, String)>,
    allow: Vec<Cidr>,
    throttle: LoginThrottle,
}

impl StatusPage {
    pub fn new(config: &StatusConfig, feed: Arc<BoardFeed>) -> StatusPage {
        StatusPage {
            feed,
            token: config.token.as_ref().map(|t| (t.clone(), cookie_value(t))),
            allow: config.allow.clone(),
            throttle: LoginThrottle::default(),
        }
    }

    /// Whether the request may see the page: its source is allowed, or it brings the token (or
    /// its cookie). `offered` is a `?token=` of `GET /`.
    fn admit(
        &self,
        source: std::net::IpAddr,
        headers: &HeaderMap,
        offered: Option<&str>,
    ) -> Result<(), Refused> {
        if self.allow.iter().any(|network| network.contains(source)) {
            return Ok(());
        }
        let now = std::time::Instant::now();
        if !self.throttle.allows(source, now) {
            return Err(Refused::Throttled);
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='));
        let presented = bearer.or(offered).is_some() || cookie.is_some();
        if let Some((token, digest)) = &self.token {
            let by_token = bearer.or(offered).is_some_and(|t| same(t, token));
            if by_token || cookie.is_some_and(|c| same(c, digest)) {
                return Ok(());
            }
        }
        if presented {
            self.throttle.failed(source, now);
        }
        Err(Refused::NoToken)
    }
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

/// What the cookie holds for `token`: its SHA-256, hex (the token itself stays out of the
/// browser's cookie jar, and any token's digest is a valid cookie value).
fn cookie_value(token: &str) -> String {
    Sha256::digest(format!("hotline-status:{token}").as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
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
    if let Err(refusal) = page.admit(source, &headers, offered) {
        return refusal.into_response();
    }
    if let (Some(_), Some((_, digest))) = (offered, &page.token) {
        // Into the cookie, and out of the address bar (and the screen's history).
        let cookie = format!("{COOKIE}={digest}; Path=/; HttpOnly; SameSite=Strict");
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
    let boards = WatchStream::new(page.feed.watch())
        .filter(|board| !board.is_empty())
        .map(|board| Ok::<_, Infallible>(Event::default().event("board").data(board.as_str())));
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(15));
    guarded(Sse::new(boards).keep_alive(keep_alive).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_strings() {
        assert!(same("a-long-status-token", "a-long-status-token"));
        assert!(!same("a-long-status-token", "a-long-status-tokeN"));
        assert!(!same("a-long", "a-long-status-token"));
        assert_eq!(cookie_value("x").len(), 64);
    }
}
