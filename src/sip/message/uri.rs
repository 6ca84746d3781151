//! SIP, SIPS (RFC 3261 §19.1) and tel (RFC 3966) URIs, IPv6 hosts included (RFC 5118).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// URI scheme. Carriers send `tel:` in P-Asserted-Identity, From and even the Request-URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
}

/// A URI host: a name or an IP address (IPv6 printed in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A URI parameter `;name` or `;name=value`.
pub type Param = (String, Option<String>);

/// A parsed URI. For `tel:` the number is in `user` and `host` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Vec<Param>,
    /// `?...` header part, kept verbatim (Refer-To may carry `Replaces` here, RFC 3891).
    pub headers: Option<String>,
}

/// Why a URI did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("unsupported URI scheme {0:?}")]
    UnsupportedScheme(String),
    #[error("malformed URI: {0}")]
    Malformed(&'static str),
}

/// Longest URI accepted (bounds memory per message).
pub const MAX_URI_LENGTH: usize = 2048;

impl Uri {
    /// A `sip:` URI with an optional user part.
    pub fn sip(user: Option<&str>, host: Host, port: Option<u16>) -> Uri {
        Uri {
            scheme: Scheme::Sip,
            user: user.map(str::to_string),
            host,
            port,
            params: Vec::new(),
            headers: None,
        }
    }

    /// ```
    /// use hotline_gateway::sip::message::{Scheme, Uri};
    ///
    /// let carrier = Uri::parse("tel:+86-138-0013-8000").map_err(|e| e.to_string())?;
    /// assert_eq!(carrier.scheme, Scheme::Tel);
    /// assert_eq!(carrier.number().as_deref(), Some("+8613800138000"));
    /// let police = Uri::parse("sip:110@[2001:db8::10]:5060").map_err(|e| e.to_string())?;
    /// assert_eq!(police.socket_addr(), "[2001:db8::10]:5060".parse().ok());
    /// # Ok::<(), String>(())
    /// ```
    ///
    /// # Errors
    /// [`UriError`] when the text is no sip/sips/tel URI.
    pub fn parse(text: &str) -> Result<Uri, UriError> {
        let text = text.trim();
        if text.len() > MAX_URI_LENGTH {
            return Err(UriError::Malformed("too long"));
        }
        let (scheme_text, rest) = text
            .split_once(':')
            .ok_or(UriError::Malformed("no scheme"))?;
        let scheme = if scheme_text.eq_ignore_ascii_case("sip") {
            Scheme::Sip
        } else if scheme_text.eq_ignore_ascii_case("sips") {
            Scheme::Sips
        } else if scheme_text.eq_ignore_ascii_case("tel") {
            Scheme::Tel
        } else if !scheme_text.is_empty()
            && scheme_text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(UriError::UnsupportedScheme(scheme_text.to_string()));
        } else {
            return Err(UriError::Malformed("bad scheme"));
        };
        if rest
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(UriError::Malformed("whitespace inside URI"));
        }
        // '?' is a user-unreserved character (§25.1), so a user part may hold one (RFC 4475
        // §3.1.1.2: "sip:...crazy?,/;;*@example.com"): then the userinfo ends at the first '@'
        // after it. Only when the text before the '?' has no '@' and is no host, so that
        // "sip:gw.example?Replaces=a@b" keeps its headers.
        let user_with_question = match rest.find('?') {
            Some(question)
                if scheme != Scheme::Tel
                    && !rest[..question].contains('@')
                    && parse_hostport(rest[..question].split(';').next().unwrap_or_default())
                        .is_err() =>
            {
                rest[question..].find('@').map(|at| question + at)
            }
            _ => None,
        };
        let (userinfo_before_question, rest) = match user_with_question {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (main, headers) = match rest.split_once('?') {
            Some((m, h)) => (m, Some(h.to_string())),
            None => (rest, None),
        };
        if scheme == Scheme::Tel {
            let mut parts = main.split(';');
            let number = parts.next().unwrap_or_default();
            if number.is_empty()
                || !number.chars().all(|c| {
                    c.is_ascii_hexdigit() || matches!(c, '+' | '-' | '.' | '(' | ')' | '*' | '#')
                })
            {
                return Err(UriError::Malformed("bad telephone number"));
            }
            return Ok(Uri {
                scheme,
                user: Some(number.to_string()),
                host: Host::Name(String::new()),
                port: None,
                params: parse_params(parts)?,
                headers,
            });
        }
        // userinfo is everything up to the last '@' before the host (the user part of a
        // telephone-subscriber may itself contain ';').
        let (userinfo, host_and_params) = match (userinfo_before_question, main.rfind('@')) {
            (Some(info), _) => (Some(info), main),
            (None, Some(at)) => (Some(&main[..at]), &main[at + 1..]),
            (None, None) => (None, main),
        };
        let user = match userinfo {
            Some(info) => {
                let user = info.split_once(':').map_or(info, |(u, _password)| u);
                if user.is_empty() {
                    return Err(UriError::Malformed("empty user part"));
                }
                Some(user.to_string())
            }
            None => None,
        };
        let mut parts = host_and_params.split(';');
        let hostport = parts.next().unwrap_or_default();
        let (host, port) = parse_hostport(hostport)?;
        Ok(Uri {
            scheme,
            user,
            host,
            port,
            params: parse_params(parts)?,
            headers,
        })
    }

    /// The value of parameter `name` (case-insensitive), `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// The address to send to when the host is an IP literal (default port 5060, §19.1.2).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port.unwrap_or(5060))),
            Host::Name(_) => None,
        }
    }

    /// The user part as a dialled number: visual separators of RFC 3966 removed
    /// (`+86-138-0013-8000` -> `+8613800138000`).
    pub fn number(&self) -> Option<String> {
        self.user.as_ref().map(|u| {
            u.split(';')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
                .collect()
        })
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Sip => f.write_str("sip:")?,
            Scheme::Sips => f.write_str("sips:")?,
            Scheme::Tel => f.write_str("tel:")?,
        }
        if self.scheme == Scheme::Tel {
            f.write_str(self.user.as_deref().unwrap_or_default())?;
        } else {
            if let Some(user) = &self.user {
                write!(f, "{user}@")?;
            }
            write!(f, "{}", self.host)?;
            if let Some(port) = self.port {
                write!(f, ":{port}")?;
            }
        }
        write_params(f, &self.params)?;
        if let Some(headers) = &self.headers {
            write!(f, "?{headers}")?;
        }
        Ok(())
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
pub fn parse_hostport(text: &str) -> Result<(Host, Option<u16>), UriError> {
    let (host_text, port_text) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or(UriError::Malformed("unclosed IPv6 reference"))?;
        let ip: IpAddr = v6
            .parse()
            .map_err(|_| UriError::Malformed("bad IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(UriError::Malformed("junk after IPv6 host"))?,
            ),
        };
        return Ok((Host::Ip(ip), parse_port(port)?));
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host_text.is_empty() {
        return Err(UriError::Malformed("empty host"));
    }
    let host = match host_text.parse::<IpAddr>() {
        Ok(ip @ IpAddr::V4(_)) => Host::Ip(ip),
        Ok(IpAddr::V6(_)) => return Err(UriError::Malformed("IPv6 host must be in brackets")),
        Err(_) => {
            if !host_text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            {
                return Err(UriError::Malformed("bad host name"));
            }
            Host::Name(host_text.to_ascii_lowercase())
        }
    };
    Ok((host, parse_port(port_text)?))
}

fn parse_port(text: Option<&str>) -> Result<Option<u16>, UriError> {
    match text {
        None => Ok(None),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .map(Some)
            .ok_or(UriError::Malformed("bad port")),
    }
}

/// Parses `name[=value]` items (already split on ';').
pub fn parse_params<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<Param>, UriError> {
    let mut params = Vec::new();
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if params.len() >= 64 {
            return Err(UriError::Malformed("too many parameters"));
        }
        match item.split_once('=') {
            Some((name, value)) => {
                params.push((name.trim().to_string(), Some(value.trim().to_string())))
            }
            None => params.push((item.to_string(), None)),
        }
    }
    Ok(params)
}

pub fn find_param<'a>(params: &'a [Param], name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

pub fn write_params(f: &mut fmt::Formatter<'_>, params: &[Param]) -> fmt::Result {
    for (name, value) in params {
        match value {
            Some(v) => write!(f, ";{name}={v}")?,
            None => write!(f, ";{name}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> Uri {
        let uri = Uri::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(uri.to_string(), text);
        assert_eq!(Uri::parse(&uri.to_string()).as_ref(), Ok(&uri));
        uri
    }

    #[test]
    fn sip_uri_with_user_port_and_params() {
        let uri = round_trip("sip:12345@127.0.0.1:5060;transport=udp;user=phone");
        assert_eq!(uri.user.as_deref(), Some("12345"));
        assert_eq!(uri.socket_addr(), Some("127.0.0.1:5060".parse().unwrap()));
        assert_eq!(uri.param("TRANSPORT"), Some(Some("udp")));
        assert_eq!(uri.param("user"), Some(Some("phone")));
    }

    #[test]
    fn ipv6_host() {
        let uri = round_trip("sip:110@[2001:db8::10]:5062");
        assert_eq!(
            uri.socket_addr(),
            Some("[2001:db8::10]:5062".parse().unwrap())
        );
        let bare = round_trip("sip:[::1]");
        assert_eq!(bare.socket_addr(), Some("[::1]:5060".parse().unwrap()));
        assert!(Uri::parse("sip:2001:db8::1").is_err());
    }

    #[test]
    fn tel_uri() {
        let uri = round_trip("tel:+86-138-0013-8000;phone-context=+86");
        assert_eq!(uri.scheme, Scheme::Tel);
        assert_eq!(uri.number().as_deref(), Some("+8613800138000"));
        assert!(Uri::parse("tel:").is_err());
        assert!(Uri::parse("tel:abc xyz").is_err());
    }

    #[test]
    fn refer_to_with_replaces_header() {
        let uri = round_trip("sip:110@gw.example;transport=tcp?Replaces=abc%40h%3Bto-tag%3D1");
        assert_eq!(
            uri.headers.as_deref(),
            Some("Replaces=abc%40h%3Bto-tag%3D1")
        );
        assert_eq!(uri.host, Host::Name("gw.example".into()));
    }

    #[test]
    fn unsupported_and_malformed() {
        assert_eq!(
            Uri::parse("urn:service:sos"),
            Err(UriError::UnsupportedScheme("urn".into()))
        );
        assert!(matches!(Uri::parse("12345"), Err(UriError::Malformed(_))));
        assert!(Uri::parse("sip:a@").is_err());
        assert!(Uri::parse("sip:a@host:99999").is_err());
        assert!(Uri::parse("sip:a@ho st").is_err());
    }
}
