//! `GET /recordings/<call id>` (and `HEAD`): a call's WAV recording for the platforms the call
//! involved, `/recordings/<call id>.json` its steps. The platform's work-order token comes as
//! `Authorization: Bearer <token>`: none or an unknown one is 401, another platform's call
//! 403, no such recording 404. One byte range (`Range: bytes=a-b`, `a-`, `-n`, RFC 9110
//! §14.2) is answered 206, an unsatisfiable one 416; a recording still being written is served
//! as far as it is written. An address that keeps bringing wrong tokens is refused 429 for a
//! while, as the work-order endpoint refuses it ([`LoginThrottle`]); a client that stops reading
//! is cut off after [`WRITE_WITHIN`].

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::media::recording::{self, Sidecar};
use crate::workorder::auth::{LoginThrottle, Tokens};

/// A download whose client takes no bytes for this long is cut off.
const WRITE_WITHIN: Duration = Duration::from_secs(30);

/// What serving recordings needs: where they are, how far back to look, who may have them.
pub struct RecordingAccess {
    pub root: PathBuf,
    pub retention_days: Option<u32>,
    pub tokens: Tokens,
    /// Wrong tokens per source address.
    pub throttle: LoginThrottle,
}

/// A header's value, by case-insensitive name.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
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

/// Answers a request for `/recordings/<name>` on `stream`.
pub(super) async fn respond(
    stream: &mut TcpStream,
    method: &str,
    name: &str,
    head: &str,
    access: &RecordingAccess,
) {
    let source = stream.peer_addr().map(|a| a.ip()).ok();
    let now = std::time::Instant::now();
    if source.is_some_and(|ip| !access.throttle.allows(ip, now)) {
        let refusal = "too many wrong tokens from this address: wait a minute\n";
        return text(stream, 429, refusal).await;
    }
    let token = header(head, "authorization").and_then(|v| v.strip_prefix("Bearer "));
    let Some(platform) = token.and_then(|t| access.tokens.platform_of(t.trim())) else {
        if let Some(ip) = source {
            access.throttle.failed(ip, now);
        }
        return text(
            stream,
            401,
            "a platform's token is needed: Authorization: Bearer <token>\n",
        )
        .await;
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
        return text(stream, 404, "no such recording\n").await;
    };
    if !sidecar.is_some_and(|s| s.platforms.contains(&platform)) {
        return text(stream, 403, "the call did not involve this platform\n").await;
    }
    let (path, content_type) = if json {
        (sidecar_path, "application/json")
    } else {
        (wav, "audio/wav")
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return text(stream, 404, "no such recording\n").await;
    };
    let length = file.metadata().await.map_or(0, |m| m.len());
    let (status, first, last) = match byte_range(header(head, "range"), length) {
        Ok(None) => (200, 0, length.saturating_sub(1)),
        Ok(Some((first, last))) => (206, first, last),
        Err(()) => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{length}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes()).await;
            return;
        }
    };
    let count = if length == 0 { 0 } else { last - first + 1 };
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {count}\r\nAccept-Ranges: bytes\r\n",
        if status == 206 { "Partial Content" } else { "OK" }
    );
    if status == 206 {
        response.push_str(&format!("Content-Range: bytes {first}-{last}/{length}\r\n"));
    }
    response.push_str("Connection: close\r\n\r\n");
    if stream.write_all(response.as_bytes()).await.is_err() || method == "HEAD" {
        return;
    }
    if file.seek(std::io::SeekFrom::Start(first)).await.is_err() {
        return;
    }
    let mut body = file.take(count);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match body.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let sent = tokio::time::timeout(WRITE_WITHIN, stream.write_all(&buffer[..read])).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}

async fn text(stream: &mut TcpStream, status: u16, body: &str) {
    let reason = match status {
        401 => "Unauthorized",
        403 => "Forbidden",
        429 => "Too Many Requests",
        _ => "Not Found",
    };
    let authenticate = if status == 401 {
        "WWW-Authenticate: Bearer\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n{authenticate}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
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
