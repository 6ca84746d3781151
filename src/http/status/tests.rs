use super::*;

const TOKEN: &str = "a-long-status-token";

fn page(allow: &[&str]) -> StatusPage {
    let access = StatusAccess {
        token: Some(TOKEN.into()),
        allow: allow
            .iter()
            .map(|c| Cidr::parse(c).unwrap_or_else(|e| panic!("{e}")))
            .collect(),
    };
    StatusPage::new(access, Arc::new(BoardFeed::new()))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let name =
            header::HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        headers.append(
            name,
            HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    headers
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn compares_whole_strings() {
    assert!(same("a-long-status-token", "a-long-status-token"));
    assert!(!same("a-long-status-token", "a-long-status-tokeN"));
    assert!(!same("a-long", "a-long-status-token"));
}

/// The management network by address; by name (DNS rebinding) it needs the token like anyone.
#[test]
fn an_allowed_network_by_address_only() {
    let page = page(&["10.9.0.0/16"]);
    let manager = ip("10.9.1.5");
    for host in [
        "10.0.0.1:9090",
        "[fd00::1]:9090",
        "localhost:9090",
        "127.0.0.1",
    ] {
        let asked = headers(&[("host", host)]);
        assert_eq!(
            page.admit(manager, &asked, None),
            Ok(Admitted::Address),
            "{host}"
        );
    }
    for host in [&[("host", "evil.example:9090")][..], &[]] {
        let rebound = headers(host);
        assert_eq!(
            page.admit(manager, &rebound, None),
            Err(Refused::NoToken),
            "{host:?}"
        );
    }
    // The token offered there still makes a cookie.
    let asked = headers(&[("host", "10.0.0.1")]);
    assert_eq!(
        page.admit(manager, &asked, Some(TOKEN)),
        Ok(Admitted::Token)
    );
    assert_eq!(
        page.admit(ip("10.8.0.1"), &headers(&[("host", "10.0.0.1")]), None),
        Err(Refused::NoToken),
        "outside the network"
    );
}

/// The token by header or offered once; only it makes a cookie, which holds until it expires
/// and only under the token that signed it.
#[test]
fn tokens_and_cookies() {
    let page = page(&[]);
    let stranger = ip("192.0.2.7");
    let bearer = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
    assert_eq!(page.admit(stranger, &bearer, None), Ok(Admitted::Token));
    assert_eq!(
        page.admit(stranger, &HeaderMap::new(), Some(TOKEN)),
        Ok(Admitted::Token)
    );
    let now = unix_secs();
    let good = cookie_until(TOKEN, now + 60);
    let asked = headers(&[("cookie", &format!("theme=dark; {COOKIE}={good}"))]);
    assert_eq!(page.admit(stranger, &asked, None), Ok(Admitted::Cookie));
    for bad in [
        cookie_until(TOKEN, now.saturating_sub(1)),
        cookie_until("another-long-token", now + 60),
        format!("{}.{}", now + 3600, &good[good.len() - 64..]),
        "garbage".to_string(),
    ] {
        assert!(!cookie_holds(&bad, TOKEN, now), "{bad}");
    }
}

/// Wrong tokens from one address: refused 429 after a few, while others still get in.
#[test]
fn wrong_tokens_are_throttled() {
    let page = page(&[]);
    let guesser = ip("192.0.2.8");
    let wrong = headers(&[("authorization", "Bearer not-the-token-at-all")]);
    let mut refusals = Vec::new();
    for _ in 0..20 {
        refusals.push(page.admit(guesser, &wrong, None));
    }
    assert_eq!(refusals[0], Err(Refused::NoToken));
    assert_eq!(refusals.last(), Some(&Err(Refused::Throttled)));
    let bearer = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
    assert_eq!(
        page.admit(ip("192.0.2.9"), &bearer, None),
        Ok(Admitted::Token)
    );
    // Nothing presented is no wrong token; nor is a stale cookie (the token changed).
    let quiet = ip("192.0.2.10");
    let stale = cookie_until("the-token-before-this", unix_secs() + 60);
    let stale = headers(&[("cookie", &format!("{COOKIE}={stale}"))]);
    for _ in 0..20 {
        assert_eq!(
            page.admit(quiet, &HeaderMap::new(), None),
            Err(Refused::NoToken)
        );
        assert_eq!(page.admit(quiet, &stale, None), Err(Refused::NoToken));
    }
}
