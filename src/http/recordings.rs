//! `GET /recordings/<call id>` (and `HEAD`): a call's WAV recording for the platforms the call
//! involved, `/recordings/<call id>.json` its steps. The platform's work-order token comes as
//! `Authorization: Bearer <token>`: none or an unknown one is 401, another platform's call
//! 403, no such recording 404. One byte range (`Range: bytes=a-b`, `a-`, `-n`, RFC 9110
//! §14.2) is answered 206, an unsatisfiable one 416; a recording still being written is served
//! as far as it is written. An address that keeps bringing wrong tokens is refused 429 for a
//! while, as the work-order endpoint refuses it ([`LoginThrottle`]); a client that stops reading
//! is cut off after [`super::WRITE_WITHIN`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{plain, HttpServices, Source};

use crate::media::recording::{self, Sidecar};
use crate::workorder::auth::{LoginThrottle, Tokens};

/// What serving recordings needs: where they are, how far back to look, who may have them.
pub struct RecordingAccess {
    pub root: PathBuf,
    pub retention_days: Option<u32>,
    pub tokens: Tokens,
    /// Wrong tokens per source address.
    pub throttle: LoginThrottle,
}

/// The byte range asked for of a file of `length` bytes: None for the whole file (no Range,
/// or one we do not take, such as several ranges), `Err` when it cannot be satisfied.
pub(super) fn byte_range(range: Option<&str>, length: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (first, last) = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(first), Ok(last)) if first <= last => (first, last.min(length.saturating_sub(1))),
        (Ok(first), Err(_)) if last.is_empty() => (first, length.saturating_sub(1)),
        (Err(_), Ok(0)) if first.is_empty() => return Err(()),
        (Err(_), Ok(suffix)) if first.is_empty() => {
            (length.saturating_sub(suffix), length.saturating_sub(1))
        }
        _ => return Ok(None),
    };
    if length == 0 || first >= length {
        return Err(());
    }
    Ok(Some((first, last)))
}

pub(super) fn routes(access: Arc<RecordingAccess>) -> axum::Router<HttpServices> {
    axum::Router::new().route(
        "/recordings/{name}",
        get(move |source, name, headers| respond(source, name, headers, Arc::clone(&access))),
    )
}

/// Answers a request for `/recordings/<name>` (axum answers HEAD with GET's head).
async fn respond(
    Extension(Source(source)): Extension<Source>,
    Path(name): Path<String>,
    headers: HeaderMap,
    access: Arc<RecordingAccess>,
) -> Response {
    let now = std::time::Instant::now();
    if !access.throttle.allows(source, now) {
        let refusal = "too many wrong tokens from this address: wait a minute\n";
        return plain(StatusCode::TOO_MANY_REQUESTS, refusal);
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(platform) = token.and_then(|t| access.tokens.platform_of(t.trim())) else {
        access.throttle.failed(source, now);
        let mut refusal = plain(
            StatusCode::UNAUTHORIZED,
            "a platform's token is needed: Authorization: Bearer <token>\n",
        );
        refusal
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return refusal;
    };
    let platform = platform.to_string();
    let (id, json) = match name.strip_suffix(".json") {
        Some(id) => (id.to_string(), true),
        None => (name.trim_end_matches(".wav").to_string(), false),
    };
    let root = access.root.clone();
    let days = access.retention_days;
    let found = tokio::task::spawn_blocking(move || {
        let (wav, sidecar) = recording::find(&root, &id, SystemTime::now(), days)?;
        let parsed: Option<Sidecar> = std::fs::read(&sidecar)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        Some((wav, sidecar, parsed))
    })
    .await
    .ok()
    .flatten();
    let Some((wav, sidecar_path, sidecar)) = found else {
        return plain(StatusCode::NOT_FOUND, "no such recording\n");
    };
    if !sidecar.is_some_and(|s| s.platforms.contains(&platform)) {
        return plain(
            StatusCode::FORBIDDEN,
            "the call did not involve this platform\n",
        );
    }
    let (path, content_type) = if json {
        (sidecar_path, "application/json")
    } else {
        (wav, "audio/wav")
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return plain(StatusCode::NOT_FOUND, "no such recording\n");
    };
    let length = file.metadata().await.map_or(0, |m| m.len());
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, first, last) = match byte_range(range, length) {
        Ok(None) => (StatusCode::OK, 0, length.saturating_sub(1)),
        Ok(Some((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last),
        Err(()) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{length}"))],
            )
                .into_response()
        }
    };
    let count = if length == 0 { 0 } else { last - first + 1 };
    if file.seek(std::io::SeekFrom::Start(first)).await.is_err() {
        return plain(StatusCode::NOT_FOUND, "no such recording\n");
    }
    // The file as far as it is written now, up to `count` bytes (a recording in progress grows).
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(count), 64 * 1024));
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, count.to_string()),
            (header::ACCEPT_RANGES, "bytes".to_string()),
        ],
        body,
    )
        .into_response();
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {first}-{last}/{length}")) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn ranges() {
        assert_eq!(byte_range(None, 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(byte_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=50-500"), 100), Ok(Some((50, 99))));
        assert_eq!(byte_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=-0"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=9-0"), 100), Ok(None));
        assert_eq!(byte_range(Some("lines=1-2"), 100), Ok(None));
    }
}
