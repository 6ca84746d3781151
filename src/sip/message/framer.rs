//! Framing SIP messages on stream transports (RFC 3261 §18.3): where one message ends in a TCP
//! or TLS byte stream, by the blank line and Content-Length.

use super::*;

/// Outcome of looking for one message at the start of a TCP stream buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// More bytes are needed.
    Incomplete,
    /// Leading CRLFs (RFC 5626 keep-alive): skip this many bytes; answer `\r\n` if it was a ping.
    KeepAlive { length: usize, ping: bool },
    /// One whole message occupies the first `length` bytes.
    Message { length: usize },
}

/// Why a TCP stream cannot be framed; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad Content-Length")]
    BadContentLength,
}

/// Finds the end of the header section: the index just after the blank line.
pub(super) fn header_end(buffer: &[u8]) -> Option<usize> {
    header_end_from(buffer, 0)
}

/// As [`header_end`], looking only at line ends from `from` on.
fn header_end_from(buffer: &[u8], from: usize) -> Option<usize> {
    let mut index = from;
    while index + 1 < buffer.len() {
        if buffer[index] == b'\n' {
            if buffer[index + 1] == b'\n' {
                return Some(index + 2);
            }
            if buffer[index + 1] == b'\r' && buffer.get(index + 2) == Some(&b'\n') {
                return Some(index + 3);
            }
        }
        index += 1;
    }
    None
}

/// Frames one message at the start of a stream buffer (§18.3: Content-Length is mandatory on
/// stream transports; a missing one counts as 0).
///
/// # Errors
/// [`FrameError`] when the stream cannot be resynchronised and must be closed.
pub fn frame(buffer: &[u8], max_size: usize) -> Result<Frame, FrameError> {
    Framer::default().next(buffer, max_size)
}

/// [`frame`] for a stream read a piece at a time: it remembers how far it has looked, so a
/// header dripped a byte per read costs each byte once, not the whole buffer again per read.
///
/// The buffer handed in must only grow at its end between calls, until a frame is returned:
/// the caller then drops that frame's bytes from the front and the framer starts afresh.
#[derive(Debug, Default)]
pub struct Framer {
    /// Where the search for the blank line goes on.
    scanned: usize,
    /// The length of the message whose header section is complete, once known.
    length: Option<usize>,
    /// Bytes examined in all, for the tests of the cost.
    examined: usize,
}

impl Framer {
    /// The next frame at the start of `buffer`.
    ///
    /// # Errors
    /// [`FrameError`] when the stream cannot be resynchronised and must be closed.
    pub fn next(&mut self, buffer: &[u8], max_size: usize) -> Result<Frame, FrameError> {
        if let Some(length) = self.length {
            if buffer.len() < length {
                return Ok(Frame::Incomplete);
            }
            *self = Framer {
                examined: self.examined,
                ..Framer::default()
            };
            return Ok(Frame::Message { length });
        }
        if buffer.is_empty() {
            return Ok(Frame::Incomplete);
        }
        if self.scanned == 0 {
            let leading = buffer
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            if leading > 0 {
                // "\r\n\r\n" is a keep-alive ping, a lone "\r\n" a pong (RFC 5626 §4.4.1).
                return Ok(Frame::KeepAlive {
                    length: leading,
                    ping: leading >= 4,
                });
            }
        }
        self.examined += buffer.len().saturating_sub(self.scanned);
        let Some(end) = header_end_from(buffer, self.scanned) else {
            if buffer.len() > max_size {
                return Err(FrameError::TooLarge(max_size));
            }
            // A blank line may begin in the last two bytes ("\n\r" awaiting its "\n"); never 0
            // again, which would look for keep-alives in the middle of a message.
            self.scanned = buffer.len().saturating_sub(2).max(1);
            return Ok(Frame::Incomplete);
        };
        let head = String::from_utf8_lossy(&buffer[..end]);
        let mut content_length = 0usize;
        for line in head.lines() {
            if let Some((name, value)) = line.split_once(':') {
                if canonical_is(name.trim(), "Content-Length") {
                    content_length = value
                        .trim()
                        .parse()
                        .map_err(|_| FrameError::BadContentLength)?;
                }
            }
        }
        let length = end
            .checked_add(content_length)
            .ok_or(FrameError::BadContentLength)?;
        if length > max_size {
            return Err(FrameError::TooLarge(max_size));
        }
        self.length = Some(length);
        self.next(buffer, max_size)
    }

    /// Bytes examined so far in the search for header ends.
    pub fn examined(&self) -> usize {
        self.examined
    }
}
