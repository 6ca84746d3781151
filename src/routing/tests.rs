use super::*;

/// The contract sample's peers and routes (`config/gateway.toml`), and `extra` routes.
fn router(extra: &[(&str, &[&str])]) -> Router {
    let peer = |name: &str, port: u16, platform: Option<&str>| {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        Peer::new(
            name,
            address,
            platform.map(String::from),
            TransportKind::Udp,
        )
    };
    let peers = vec![
        peer("carrier", 5070, None),
        peer("hotline", 5080, Some("12345")),
        peer("police", 5090, Some("110")),
    ];
    let routes = [("12345", &["hotline"][..]), ("110", &["police"][..])]
        .iter()
        .chain(extra)
        .map(|(number, peers)| Route {
            number: NumberPattern::parse(number).unwrap_or_else(|e| panic!("{number}: {e}")),
            peers: peers.iter().map(|p| p.to_string()).collect(),
            record: true,
            schedule: Default::default(),
            queue: None,
        })
        .collect();
    Router::new(peers, routes)
}

#[test]
fn networks_contain_their_addresses() {
    let parse = |s: &str| Cidr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    let carrier = parse("203.0.113.0/24");
    assert!(carrier.contains("203.0.113.77".parse().unwrap_or_else(|_| unreachable!())));
    assert!(!carrier.contains("203.0.114.1".parse().unwrap_or_else(|_| unreachable!())));
    // An IPv4-mapped IPv6 source is the IPv4 address.
    assert!(carrier.contains(
        "::ffff:203.0.113.9"
            .parse()
            .unwrap_or_else(|_| unreachable!())
    ));
    let one = parse("198.51.100.7");
    assert!(one.contains("198.51.100.7".parse().unwrap_or_else(|_| unreachable!())));
    assert!(!one.contains("198.51.100.8".parse().unwrap_or_else(|_| unreachable!())));
    assert!(parse("0.0.0.0/0").contains("192.0.2.1".parse().unwrap_or_else(|_| unreachable!())));
    let v6 = parse("2001:db8::/32");
    assert!(v6.contains("2001:db8:1::5".parse().unwrap_or_else(|_| unreachable!())));
    assert!(!v6.contains("2001:db9::5".parse().unwrap_or_else(|_| unreachable!())));
    assert_eq!(
        Cidr::parse("10.0.0.0/33"),
        Err(CidrError::Prefix("33".into()))
    );
    assert!(matches!(Cidr::parse("ten/8"), Err(CidrError::Address(_))));
}

#[test]
fn patterns_match_as_documented() {
    let p = |s: &str| NumberPattern::parse(s).unwrap_or(NumberPattern::Exact(String::new()));
    assert!(p("_1XX").matches("110"));
    assert!(p("_1XX").matches("120"));
    assert!(!p("_1XX").matches("1100"));
    assert!(!p("_1XX").matches("12"));
    assert!(p("_NXX").matches("211"));
    assert!(!p("_NXX").matches("110"));
    assert!(p("_1[12]0").matches("120"));
    assert!(!p("_1[12]0").matches("130"));
    assert!(p("_9.").matches("9123"));
    assert!(!p("_9.").matches("9"));
    assert!(p("_9!").matches("9"));
    assert!(p("_+86X.").matches("+8613800138000"));
    assert!(NumberPattern::parse("_9.1").is_err());
    assert!(NumberPattern::parse("_[1-").is_err());
    assert!(NumberPattern::parse("_").is_err());
}

#[test]
fn exact_route_wins_over_pattern() {
    let r = router(&[("_1XX", &["hotline", "police"])]);
    let names = |n: &str| -> Vec<String> {
        r.route(n)
            .map(|ps| ps.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(names("110"), vec!["police"]);
    assert_eq!(names("119"), vec!["hotline", "police"]);
    assert!(r.route("999").is_none());
}

#[test]
fn down_peers_are_left_out_of_routes() {
    let r = router(&[("_1XX", &["hotline", "police"])]);
    let names = |n: &str| -> Option<Vec<String>> {
        r.available(n)
            .map(|ps| ps.iter().map(|p| p.name.clone()).collect())
    };
    assert_eq!(names("119"), Some(vec!["hotline".into(), "police".into()]));
    let hotline = r.peer_by_name("hotline");
    hotline.iter().for_each(|p| p.set_up(false));
    assert_eq!(names("119"), Some(vec!["police".into()]));
    assert_eq!(
        names("12345"),
        Some(vec![]),
        "a route whose peers are all down"
    );
    assert_eq!(names("999"), None);
    assert_eq!(r.peers_down(), vec!["hotline"]);
    // The configured route is still whole.
    assert_eq!(r.route("119").map(<[Arc<Peer>]>::len), Some(2));
    hotline.iter().for_each(|p| p.set_up(true));
    assert!(r.peers_down().is_empty());
}

#[test]
fn source_address_identifies_the_peer() {
    let r = router(&[]);
    let carrier = r.peer_for_source("127.0.0.1:5070".parse().unwrap());
    assert_eq!(carrier.map(|p| p.name.clone()), Some("carrier".into()));
    assert!(r
        .peer_for_source("127.0.0.1:5071".parse().unwrap())
        .is_none());
    assert!(r
        .peer_for_source("10.0.0.1:5070".parse().unwrap())
        .is_none());
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:5080".parse().unwrap();
    assert_eq!(
        r.peer_for_source(mapped).map(|p| p.name.clone()),
        Some("hotline".into())
    );
}

#[test]
fn a_front_proxy_names_the_original_source_and_nobody_else_may() {
    let mut front = Peer::new(
        "kamailio",
        SocketAddr::from(([127, 0, 0, 1], 5060)),
        None,
        TransportKind::Udp,
    );
    front.front = true;
    let carrier = Peer::new(
        "carrier",
        SocketAddr::from(([127, 0, 0, 1], 5070)),
        None,
        TransportKind::Udp,
    );
    let hotline = Peer::new(
        "hotline",
        SocketAddr::from(([127, 0, 0, 1], 5080)),
        Some("12345".into()),
        TransportKind::Udp,
    );
    let r = Router::new(vec![front, carrier, hotline], Vec::new());
    let attributed = |source: &str, header: Option<&str>| {
        r.attributed_peer(source.parse().unwrap(), || header, false)
            .map(|p| p.name.clone())
    };
    let via_front = |header| attributed("127.0.0.1:5060", Some(header));
    assert_eq!(via_front("127.0.0.1:5070"), Some("carrier".into()));
    assert_eq!(via_front(" 127.0.0.1:5080 "), Some("hotline".into()));
    // A stranger relayed by the front is a stranger; so is the front naming itself.
    assert_eq!(via_front("192.0.2.1:5060"), None);
    assert_eq!(via_front("127.0.0.1:5060"), None);
    assert_eq!(via_front("not an address"), None);
    // Its own OPTIONS (the dispatcher's probes) carry no header; anything else it relays
    // unnamed is nobody's.
    let probe = r.attributed_peer("127.0.0.1:5060".parse().unwrap(), || None, true);
    assert_eq!(probe.map(|p| p.name.clone()), Some("kamailio".into()));
    assert_eq!(attributed("127.0.0.1:5060", None), None);
    // Anyone else's header changes nothing.
    assert_eq!(
        attributed("127.0.0.1:5070", Some("127.0.0.1:5080")),
        Some("carrier".into())
    );
    assert_eq!(attributed("192.0.2.1:5060", Some("127.0.0.1:5070")), None);
}

/// A dialled number's route as the figures name it: the route it takes (exact before
/// patterns), its number as configured.
#[test]
fn numbers_are_named_by_their_route() {
    let router = router(&[("_1[12]x", &["police"]), ("_9.", &["carrier"])]);
    let at = router.now_ms();
    assert_eq!(router.route_name_at("12345", at).as_deref(), Some("12345"));
    assert_eq!(router.route_name_at("110", at).as_deref(), Some("110"));
    assert_eq!(router.route_name_at("119", at).as_deref(), Some("_1[12]x"));
    assert_eq!(
        router.route_name_at("913800138000", at).as_deref(),
        Some("_9.")
    );
    assert_eq!(router.route_name_at("555", at), None);
}
