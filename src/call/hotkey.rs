//! Hotkeys: DTMF sequences from an agent's leg (`[[hotkey]]`) that trigger call operations, and
//! the DTMF carried in SIP INFO bodies. Sans-IO: digits come in with the time, the matcher says
//! what to do, and [`HotkeyMatcher::poll_timeout`] says when to come back.
//!
//! Digits are held back while they may still become a hotkey (`*` of `*1`); a digit that makes
//! the sequence match no hotkey, or the inter-digit timeout, releases what was held, unchanged
//! and in order, to the other party. The digits of a matched hotkey never reach the other party.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a completed hotkey does (`[[hotkey]] action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HotkeyAction {
    Transfer,
    Conference,
}

/// One configured hotkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hotkey {
    pub dtmf: String,
    pub action: HotkeyAction,
    pub target: String,
}

/// What the matcher makes of a digit (or of the timeout).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Matched {
    /// Digits to pass on to the other party, in order.
    pub release: String,
    /// The hotkey completed by this digit, if any.
    pub hotkey: Option<Hotkey>,
}

/// Matches one leg's digits against the hotkeys.
#[derive(Debug)]
pub struct HotkeyMatcher {
    hotkeys: Arc<[Hotkey]>,
    inter_digit: Duration,
    held: String,
    deadline: Option<Instant>,
}

impl HotkeyMatcher {
    pub fn new(hotkeys: Arc<[Hotkey]>, inter_digit: Duration) -> HotkeyMatcher {
        HotkeyMatcher {
            hotkeys,
            inter_digit,
            held: String::new(),
            deadline: None,
        }
    }

    /// One digit (`0`-`9`, `*`, `#`, `A`-`D`) from the leg.
    pub fn handle_digit(&mut self, now: Instant, digit: char) -> Matched {
        let mut out = Matched::default();
        if self.deadline.is_some_and(|at| now >= at) {
            out.release.push_str(&std::mem::take(&mut self.held));
        }
        self.held.push(digit);
        // Release from the front until what is held is a prefix of some hotkey (or empty), so
        // "1*1" passes "1" and still matches "*1".
        while !self.held.is_empty() && !self.is_prefix(&self.held) {
            let first = self.held.remove(0);
            out.release.push(first);
        }
        if let Some(hotkey) = self.hotkeys.iter().find(|h| h.dtmf == self.held) {
            out.hotkey = Some(hotkey.clone());
            self.held.clear();
        }
        self.deadline = (!self.held.is_empty()).then(|| now + self.inter_digit);
        out
    }

    /// The inter-digit timeout passed: what was held goes to the other party.
    pub fn handle_timeout(&mut self, now: Instant) -> String {
        if self.deadline.is_some_and(|at| now >= at) {
            self.deadline = None;
            return std::mem::take(&mut self.held);
        }
        String::new()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    fn is_prefix(&self, held: &str) -> bool {
        self.hotkeys.iter().any(|h| h.dtmf.starts_with(held))
    }
}

/// The digit of a DTMF INFO body: `application/dtmf-relay` (`Signal=5` lines, the de-facto
/// format of Cisco and most PBXs) or `application/dtmf` (the bare digit). None for other
/// bodies, which are not DTMF.
///
/// ```
/// use hotline_gateway::call::hotkey::dtmf_of_info;
///
/// assert_eq!(dtmf_of_info(Some("application/dtmf-relay"), b"Signal=*\r\nDuration=160\r\n"), Some('*'));
/// assert_eq!(dtmf_of_info(Some("application/dtmf"), b"11"), Some('#'));
/// assert_eq!(dtmf_of_info(Some("application/sdp"), b"v=0"), None);
/// ```
pub fn dtmf_of_info(content_type: Option<&str>, body: &[u8]) -> Option<char> {
    let kind = content_type?
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let text = std::str::from_utf8(body).ok()?;
    let value = match kind.as_str() {
        "application/dtmf-relay" => text.lines().find_map(|line| {
            let (name, value) = line.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("signal")
                .then(|| value.trim())
        })?,
        "application/dtmf" => text.trim(),
        _ => return None,
    };
    digit_of(value)
}

/// `5`, `*`, `#`, `A`-`D`, or the RFC 4733 event codes `10` and `11` for `*` and `#`.
pub fn digit_of(value: &str) -> Option<char> {
    match value {
        "10" => Some('*'),
        "11" => Some('#'),
        "12" => Some('A'),
        "13" => Some('B'),
        "14" => Some('C'),
        "15" => Some('D'),
        _ => {
            let mut chars = value.chars();
            let digit = chars.next()?.to_ascii_uppercase();
            (chars.next().is_none() && (digit.is_ascii_digit() || "*#ABCD".contains(digit)))
                .then_some(digit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: Duration = Duration::from_millis(3000);

    fn matcher() -> HotkeyMatcher {
        let hotkeys: Arc<[Hotkey]> = Arc::from(vec![
            Hotkey {
                dtmf: "*1".into(),
                action: HotkeyAction::Transfer,
                target: "110".into(),
            },
            Hotkey {
                dtmf: "*3".into(),
                action: HotkeyAction::Conference,
                target: "110".into(),
            },
            Hotkey {
                dtmf: "**9".into(),
                action: HotkeyAction::Transfer,
                target: "119".into(),
            },
        ]);
        HotkeyMatcher::new(hotkeys, GAP)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_hotkey_is_matched_and_its_digits_are_swallowed() {
        let start = Instant::now();
        let mut m = matcher();
        let first = m.handle_digit(start, '*');
        assert_eq!(first, Matched::default(), "held: may become *1");
        assert_eq!(m.poll_timeout(), Some(start + GAP));
        let second = m.handle_digit(start + ms(400), '1');
        assert_eq!(second.release, "");
        assert_eq!(second.hotkey.map(|h| h.target), Some("110".into()));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn digits_that_match_nothing_pass_through_in_order() {
        let start = Instant::now();
        let mut m = matcher();
        assert_eq!(m.handle_digit(start, '5').release, "5");
        assert_eq!(m.handle_digit(start, '*').release, "");
        let out = m.handle_digit(start, '7');
        assert_eq!((out.release.as_str(), out.hotkey), ("*7", None));
        // "1*1": the 1 passes, *1 still matches.
        let out = m.handle_digit(start, '1');
        assert_eq!(out.release, "1");
        m.handle_digit(start, '*');
        assert!(m.handle_digit(start, '1').hotkey.is_some());
    }

    #[test]
    fn the_inter_digit_timeout_releases_what_was_held() {
        let start = Instant::now();
        let mut m = matcher();
        m.handle_digit(start, '*');
        assert_eq!(m.handle_timeout(start + ms(2999)), "", "not yet");
        assert_eq!(m.handle_timeout(start + GAP), "*");
        assert_eq!(m.poll_timeout(), None);
        // A late second digit starts afresh instead of completing the hotkey.
        m.handle_digit(start, '*');
        let late = m.handle_digit(start + GAP + ms(1), '1');
        assert_eq!((late.release.as_str(), late.hotkey), ("*1", None));
    }

    #[test]
    fn a_longer_hotkey_sharing_a_prefix() {
        let start = Instant::now();
        let mut m = matcher();
        m.handle_digit(start, '*');
        m.handle_digit(start, '*');
        let out = m.handle_digit(start, '9');
        assert_eq!(out.hotkey.map(|h| h.target), Some("119".into()));
        m.handle_digit(start, '*');
        m.handle_digit(start, '*');
        let out = m.handle_digit(start, '1');
        assert_eq!(out.release, "*", "the first * passes, *1 matches");
        assert!(out.hotkey.is_some());
    }

    #[test]
    fn info_bodies() {
        assert_eq!(
            dtmf_of_info(
                Some("Application/DTMF-Relay"),
                b"Signal= 1\r\nDuration= 250\r\n"
            ),
            Some('1')
        );
        assert_eq!(dtmf_of_info(Some("application/dtmf"), b"#\r\n"), Some('#'));
        assert_eq!(dtmf_of_info(Some("application/dtmf"), b"10"), Some('*'));
        assert_eq!(
            dtmf_of_info(Some("application/dtmf-relay"), b"Duration=1\r\n"),
            None
        );
        assert_eq!(dtmf_of_info(Some("application/dtmf"), b"xyz"), None);
        assert_eq!(dtmf_of_info(Some("application/dtmf"), &[0xff, 0xfe]), None);
        assert_eq!(dtmf_of_info(None, b"1"), None);
    }
}
