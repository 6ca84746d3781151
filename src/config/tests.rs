use super::*;
use crate::routing::InterfaceId;

fn sample() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
        .unwrap_or_default()
}

fn error_of(text: &str) -> String {
    match Config::parse(Path::new("test.toml"), text) {
        Ok(_) => String::from("(loaded)"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn contract_sample_loads_unchanged_with_defaults() {
    let config = Config::parse(Path::new("config/gateway.toml"), &sample());
    let config = match config {
        Ok(c) => c,
        Err(e) => panic!("sample must load: {e}"),
    };
    assert_eq!(config.sip.listen, "127.0.0.1:5060".parse().unwrap());
    assert_eq!(config.media.ports, [20000, 20999]);
    assert_eq!(config.peers.len(), 3);
    assert_eq!(config.peers[2].platform.as_deref(), Some("110"));
    assert_eq!(config.routes[0].peers, vec!["hotline".to_string()]);
    assert_eq!(config.hotkeys[1].action, HotkeyAction::Conference);
    assert_eq!(config.sip.t1_ms, 500);
    assert_eq!(config.media.codecs, vec![Codec::Pcma, Codec::Pcmu]);
    assert_eq!(config.media.telephone_event, 101);
    assert_eq!(config.peers[0].transport, TransportKind::Udp);
}

#[test]
fn unknown_key_names_the_key() {
    let text = sample().replace("[sip]\n", "[sip]\nlisten_port = 5\n");
    let message = error_of(&text);
    assert!(message.starts_with("test.toml: key `sip"), "{message}");
    assert!(message.contains("listen_port"), "{message}");
}

#[test]
fn bad_address_names_file_key_and_reason() {
    let text = sample().replace("address = \"127.0.0.1:5090\"", "address = \"police.local\"");
    let message = error_of(&text);
    assert!(message.contains("test.toml"), "{message}");
    assert!(message.contains("peer[2].address"), "{message}");
    assert!(message.contains("invalid"), "{message}");
}

#[test]
fn platforms_need_a_real_token_and_a_name_of_their_own() {
    let good = format!(
        "{}\n[[platform]]\nname = \"110\"\ntoken = \"a-token-long-enough\"\n",
        sample()
    );
    let config = Config::parse(Path::new("test.toml"), &good);
    assert!(config.is_ok_and(|c| c.platforms.len() == 1 && c.api.outbox_retention_hours == 168));
    let short = format!(
        "{}\n[[platform]]\nname = \"110\"\ntoken = \"secret\"\n",
        sample()
    );
    assert!(error_of(&short).starts_with("test.toml: key `platform[0].token`"));
    let twice = format!("{good}\n[[platform]]\nname = \"110\"\ntoken = \"another-long-token\"\n");
    assert!(
        error_of(&twice).contains("platform[1].name"),
        "{}",
        error_of(&twice)
    );
    let shared =
        format!("{good}\n[[platform]]\nname = \"12345\"\ntoken = \"a-token-long-enough\"\n");
    assert_eq!(
        error_of(&shared),
        "test.toml: key `platform[1].token`: is another platform's token too: each platform needs its own"
    );
}

#[test]
fn route_to_unknown_peer_is_refused() {
    let text = sample().replace("peers = [\"police\"]", "peers = [\"polise\"]");
    assert_eq!(
        error_of(&text),
        "test.toml: key `route[1].peers[0]`: no [[peer]] is named \"polise\""
    );
}

#[test]
fn reversed_port_range_is_refused() {
    let text = sample().replace("[20000, 20999]", "[20999, 20000]");
    assert!(error_of(&text).contains("key `media.ports`"));
}

#[test]
fn duplicate_peer_and_bad_hotkey_are_refused() {
    let text = sample().replace("name = \"police\"", "name = \"hotline\"");
    assert!(error_of(&text).contains("duplicate peer name"));
    let text = sample().replace("dtmf = \"*1\"", "dtmf = \"*x\"");
    assert!(error_of(&text).contains("hotkey[0].dtmf"));
}

#[test]
fn toml_syntax_error_is_reported_with_file() {
    let message = error_of("[sip\nlisten = 1");
    assert!(
        message.starts_with("test.toml: key `(top level)`"),
        "{message}"
    );
}

#[test]
fn the_sample_converts_into_the_parts_values() {
    use crate::call::hotkey::Hotkey;
    use crate::routing::Router;
    use crate::sip::sdp::MediaPolicy;
    use crate::sip::transaction::TimerConfig;

    let config = match Config::parse(Path::new("config/gateway.toml"), &sample()) {
        Ok(c) => c,
        Err(e) => panic!("sample must load: {e}"),
    };
    let router = Router::from(&config);
    let names = |number: &str| -> Vec<String> {
        router
            .route(number)
            .map(|peers| peers.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(names("12345"), vec!["hotline"]);
    assert_eq!(names("110"), vec!["police"]);
    let carrier = router.peer_for_source("127.0.0.1:5070".parse().unwrap());
    assert_eq!(carrier.map(|p| p.name.clone()), Some("carrier".into()));
    let hotkeys: Vec<Hotkey> = config.hotkeys.iter().map(Hotkey::from).collect();
    assert_eq!(hotkeys[0].dtmf, "*1");
    assert_eq!(hotkeys[1].action, HotkeyAction::Conference);
    assert_eq!(TimerConfig::from(&config.sip), TimerConfig::default());
    assert_eq!(MediaPolicy::from(&config.media), MediaPolicy::default());
    let session_timers = config.sip.session_timers().map(|s| s.session_expires);
    assert_eq!(session_timers, Some(std::time::Duration::from_secs(1800)));
    assert_eq!(config.sip.supported(), ["timer"]);
    let guard = crate::sip::guard::GuardConfig::from(&config.sip);
    assert!(guard.reject_unknown && guard.allow.is_empty());
    assert!(config.tls_files().is_none());
    let link = crate::workorder::tail::LinkSettings::from(&config);
    assert_eq!(link.address, config.api.grpc);
    assert!(link.tls.is_none() && link.platforms.is_empty());
}

#[test]
fn parsed_values_are_typed_in_the_tree() {
    let text = sample()
        .replace(
            "[sip]\n",
            "[sip]\nallow = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
        )
        .replace("[media]\n", "[media]\ncodecs = [\"PCMU\"]\n");
    let config = match Config::parse(Path::new("test.toml"), &text) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert!(config.sip.allow[0].contains("10.1.2.3".parse().unwrap()));
    assert!(config.sip.allow[1].contains("2001:db8::1".parse().unwrap()));
    assert_eq!(config.media.codecs, vec![Codec::Pcmu]);
    assert_eq!(config.routes[1].number.text(), "110");
    assert_eq!(
        config.peers[0].auth_algorithms,
        vec![Algorithm::Sha256, Algorithm::Md5]
    );
}

#[test]
fn a_bad_value_is_reported_once_with_file_key_and_reason() {
    let cases = [
        (
            sample().replace("[sip]\n", "[sip]\nallow = [\"10.0.0.0/8\", \"ten/8\"]\n"),
            "test.toml: key `sip.allow[1]`: \"ten\" is no IP address",
        ),
        (
            sample().replace("[media]\n", "[media]\ncodecs = [\"PCMA\", \"PCMU\", \"G729\"]\n"),
            "test.toml: key `media.codecs[2]`: unknown codec \"G729\"; supported: PCMA, PCMU",
        ),
        (
            sample().replace("number = \"110\"", "number = \"_11.0\""),
            "test.toml: key `route[1].number`: `.` may only end a pattern",
        ),
        (
            format!("{}\n[screening]\nblocklist = [\"_[1-\"]\n", sample()),
            "test.toml: key `screening.blocklist[0]`: bad range inside [...]",
        ),
        (
            sample().replace(
                "name = \"carrier\"",
                "name = \"carrier\"\nsources = [\"203.0.113.0/33\"]",
            ),
            "test.toml: key `peer[0].sources[0]`: prefix length 33 is too long for the address",
        ),
        (
            sample().replace(
                "name = \"carrier\"",
                "name = \"carrier\"\nauth_algorithms = [\"SHA-1\"]",
            ),
            "test.toml: key `peer[0].auth_algorithms[0]`: \"SHA-1\" is none of SHA-512-256, SHA-256, MD5",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error_of(&text), expected);
    }
    let bad_name = sample().replace(
        "name = \"carrier\"",
        "name = \"carrier\"\ntls_name = \"not a name\"",
    );
    let message = error_of(&bad_name);
    assert!(
        message.starts_with("test.toml: key `peer[0].tls_name`: "),
        "{message}"
    );
}

#[test]
fn tuned_keys_convert_into_the_parts_durations_and_sizes() {
    use std::sync::Arc;
    use std::time::Duration;

    let text = sample()
        .replace(
            "[sip]\n",
            "[sip]\nt1_ms = 250\nsession_expires_secs = 0\nuser_agent = \"gw\"\n\
             tcp_idle_timeout_secs = 30\nallow = [\"10.0.0.0/8\"]\nunknown_source = \"drop\"\n",
        )
        .replace("[store]\n", "[store]\nmax_size_mb = 2\n");
    let config = match Config::parse(Path::new("test.toml"), &text) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let settings = config.call_settings(CallContext {
        local: crate::sip::target::LocalAddresses::single("192.0.2.1:5060".parse().unwrap(), None),
        router: Arc::new(crate::routing::Router::from(&config)),
        directory: Arc::default(),
    });
    assert_eq!(settings.cleanup_timeout, Duration::from_secs(16));
    assert_eq!(settings.user_agent.as_deref(), Some("gw"));
    assert_eq!(settings.hotkeys.len(), 2);
    assert!(settings.session_timers.is_none() && config.sip.supported().is_empty());
    let transport = crate::sip::transport::TransportConfig::from(&config.sip);
    assert_eq!(transport.tcp_idle_timeout, Duration::from_secs(30));
    assert_eq!(transport.listen, config.sip.listen);
    let guard = crate::sip::guard::GuardConfig::from(&config.sip);
    assert!(!guard.reject_unknown && guard.allow.len() == 1);
    let store = crate::store::StoreOptions::from(&config.store);
    assert_eq!(store.max_size_bytes, Some(2 * 1024 * 1024));
    let budget = crate::limits::Budget::from(&config);
    assert_eq!(budget.sip_tcp, config.sip.max_tcp_connections as u64);
    assert_eq!(
        config.api.outbox_retention(),
        Duration::from_secs(168 * 3600)
    );
}

#[test]
fn probe_secs_is_off_by_default_and_bounded() {
    use crate::routing::Router;
    let probed = sample().replace(
        "address = \"127.0.0.1:5090\"",
        "address = \"127.0.0.1:5090\"\nprobe_secs = 10",
    );
    let config = match Config::parse(Path::new("test.toml"), &probed) {
        Ok(c) => c,
        Err(e) => panic!("probe_secs = 10 must load: {e}"),
    };
    let router = Router::from(&config);
    let interval = |name: &str| router.peer_by_name(name).and_then(|p| p.probe_interval);
    assert_eq!(interval("police"), Some(std::time::Duration::from_secs(10)));
    assert_eq!(interval("hotline"), None, "absent: not probed");
    let off = sample().replace(
        "address = \"127.0.0.1:5090\"",
        "address = \"127.0.0.1:5090\"\nprobe_secs = 0",
    );
    let config = Config::parse(Path::new("test.toml"), &off);
    assert!(config.is_ok_and(|c| Router::from(&c)
        .peer_by_name("police")
        .is_some_and(|p| p.probe_interval.is_none())));
    let rare = sample().replace(
        "address = \"127.0.0.1:5090\"",
        "address = \"127.0.0.1:5090\"\nprobe_secs = 86400",
    );
    let message = error_of(&rare);
    assert!(message.starts_with("test.toml"), "{message}");
    assert!(message.contains("peer[2].probe_secs"), "{message}");
    assert!(message.contains("3600"), "{message}");
    let negative = sample().replace(
        "address = \"127.0.0.1:5090\"",
        "address = \"127.0.0.1:5090\"\nprobe_secs = -1",
    );
    assert!(
        error_of(&negative).contains("probe_secs"),
        "{}",
        error_of(&negative)
    );
}

#[test]
fn outbound_credentials_go_together_and_convert_redacted() {
    use crate::routing::Router;
    let both = sample().replace(
        "address = \"127.0.0.1:5090\"",
        "address = \"127.0.0.1:5090\"\noutbound_username = \"gw\"\noutbound_password = \"secret-secret\"",
    );
    let config = match Config::parse(Path::new("test.toml"), &both) {
        Ok(c) => c,
        Err(e) => panic!("outbound credentials must load: {e}"),
    };
    let router = Router::from(&config);
    let outbound = router
        .peer_by_name("police")
        .and_then(|p| p.outbound.clone());
    assert_eq!(outbound.as_ref().map(|o| o.username.as_str()), Some("gw"));
    assert_eq!(
        outbound.as_ref().map(|o| o.password.as_str()),
        Some("secret-secret")
    );
    let logged = format!("{:?}", router.peer_by_name("police"));
    assert!(!logged.contains("secret-secret"), "{logged}");
    assert!(router
        .peer_by_name("hotline")
        .is_some_and(|p| p.outbound.is_none()));
    let alone = sample().replace(
        "address = \"127.0.0.1:5090\"",
        "address = \"127.0.0.1:5090\"\noutbound_username = \"gw\"",
    );
    let message = error_of(&alone);
    assert!(message.starts_with("test.toml"), "{message}");
    assert!(message.contains("peer[2].outbound_password"), "{message}");
    assert!(message.contains("both or neither"), "{message}");
}

#[test]
fn register_needs_outbound_credentials_and_bounded_expiry() {
    use crate::routing::Router;
    let credentials = "address = \"127.0.0.1:5090\"\noutbound_username = \"gw\"\noutbound_password = \"secret-secret\"";
    let with = |extra: &str| {
        sample().replace(
            "address = \"127.0.0.1:5090\"",
            &format!("{credentials}\n{extra}"),
        )
    };
    let config = match Config::parse(Path::new("test.toml"), &with("register = true")) {
        Ok(c) => c,
        Err(e) => panic!("register must load: {e}"),
    };
    let router = Router::from(&config);
    let registration = router
        .peer_by_name("police")
        .and_then(|p| p.registration.clone());
    assert_eq!(
        registration
            .as_ref()
            .map(|r| (r.user.as_str(), r.domain.as_str(), r.expires.as_secs())),
        Some(("gw", "127.0.0.1", 3600))
    );
    assert!(router
        .peer_by_name("hotline")
        .is_some_and(|p| p.registration.is_none()));
    let short =
        with("register = true\nregister_expires_secs = 2\nregister_domain = \"police.example\"");
    let config = match Config::parse(Path::new("test.toml"), &short) {
        Ok(c) => c,
        Err(e) => panic!("short expiry must load: {e}"),
    };
    let registration = Router::from(&config)
        .peer_by_name("police")
        .and_then(|p| p.registration.clone());
    assert_eq!(
        registration.map(|r| (r.domain, r.expires.as_secs())),
        Some(("police.example".into(), 2))
    );
    let alone = sample().replace(
        "address = \"127.0.0.1:5090\"",
        "address = \"127.0.0.1:5090\"\nregister = true",
    );
    let message = error_of(&alone);
    assert!(message.starts_with("test.toml"), "{message}");
    assert!(message.contains("peer[2].register`"), "{message}");
    assert!(message.contains("outbound_username"), "{message}");
    for bad in ["register_expires_secs = 1", "register_expires_secs = 86401"] {
        let message = error_of(&with(&format!("register = true\n{bad}")));
        assert!(
            message.contains("peer[2].register_expires_secs"),
            "{message}"
        );
        assert!(message.contains("2 to 86400"), "{message}");
    }
    let message = error_of(&with("register = true\nregister_domain = \"a b\""));
    assert!(message.contains("peer[2].register_domain"), "{message}");
}

/// The sample with two more networks: 12345 on the e-government network, 110 on the police
/// network; the carrier stays on the default interface.
fn three_networks() -> String {
    sample()
        .replace(
            "platform = \"12345\"\n",
            "platform = \"12345\"\ninterface = \"egov\"\n",
        )
        .replace(
            "platform = \"110\"\n",
            "platform = \"110\"\ninterface = \"police-net\"\n",
        )
        + "\n[[interface]]\nname = \"egov\"\nsip = \"10.2.0.5:5060\"\nmedia = \"10.2.0.5\"\n\
           ports = [22000, 22999]\n\
           \n[[interface]]\nname = \"police-net\"\nsip = \"10.1.0.5:5060\"\nmedia = \"10.1.0.5\"\n\
           ports = [22000, 22999]\nadvertise = \"198.51.100.7\"\n"
}

#[test]
fn interfaces_give_each_peer_its_network() {
    let config = match Config::parse(Path::new("test.toml"), &three_networks()) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let router = crate::routing::Router::from(&config);
    let interface_of = |name: &str| {
        router
            .peers()
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.interface)
    };
    assert_eq!(interface_of("carrier"), Some(InterfaceId::DEFAULT));
    assert_eq!(interface_of("hotline"), Some(InterfaceId(1)));
    assert_eq!(interface_of("police"), Some(InterfaceId(2)));
    assert_eq!(config.interface_name(InterfaceId(2)), "police-net");
    assert_eq!(config.interface_name(InterfaceId::DEFAULT), "default");
    let transport = config.transport();
    assert_eq!(transport.interfaces.len(), 2);
    assert_eq!(
        transport.interfaces[1].sip,
        "10.1.0.5:5060".parse().unwrap()
    );
    // Bound ports (the first interface on an ephemeral one) with each advertised address.
    let local = config.local_addresses(&[
        ("127.0.0.1:5060".parse().unwrap(), None),
        ("10.2.0.5:41000".parse().unwrap(), None),
        ("10.1.0.5:5060".parse().unwrap(), None),
    ]);
    assert_eq!(
        local.of(InterfaceId(1)).sip,
        "10.2.0.5:41000".parse().unwrap()
    );
    assert_eq!(
        local.of(InterfaceId(2)).sip,
        "198.51.100.7:5060".parse().unwrap(),
        "advertise is what the police network is told"
    );
}

#[test]
fn interface_mistakes_name_the_key() {
    let cases = [
        (
            three_networks().replace("interface = \"egov\"", "interface = \"gov\""),
            "peer[1].interface",
            "no [[interface]] is named \"gov\"",
        ),
        (
            three_networks().replace("name = \"police-net\"", "name = \"egov\""),
            "interface[1].name",
            "duplicate interface name",
        ),
        (
            three_networks().replace("sip = \"10.2.0.5:5060\"", "sip = \"127.0.0.1:5060\""),
            "interface[0].sip",
            "bound by sip.listen",
        ),
        (
            three_networks().replace("media = \"10.1.0.5\"", "media = \"10.2.0.5\""),
            "interface[1].ports",
            "overlaps interface[0].ports",
        ),
        (
            three_networks().replace(
                "ports = [22000, 22999]\nadvertise",
                "ports = [23000, 23001]\nadvertise",
            ),
            "interface[1].ports",
            "at least two RTP/RTCP pairs",
        ),
        (
            three_networks().replace("sip = \"10.1.0.5:5060\"", "sip = \"0.0.0.0:5060\""),
            "interface[1].sip",
            "concrete address",
        ),
        (
            three_networks().replace(
                "sip = \"10.1.0.5:5060\"",
                "sip = \"10.1.0.5:5060\"\ntls = \"10.1.0.5:5061\"",
            ),
            "interface[1].tls",
            "sip.tls_cert",
        ),
        (
            three_networks().replace("advertise = \"198.51.100.7\"", "advertise = \"0.0.0.0\""),
            "interface[1].advertise",
            "cannot be told to peers",
        ),
        (
            three_networks().replace(
                "ports = [22000, 22999]\nadvertise",
                "ports = [0, 999]\nadvertise",
            ),
            "interface[1].ports",
            "must be a range",
        ),
        (
            three_networks().replace("listen = \"127.0.0.1:5060\"", "listen = \"0.0.0.0:5060\""),
            "sip.listen",
            "wildcard receives every network's traffic",
        ),
        (
            three_networks().replace("peers = [\"police\"]", "peers = [\"police\", \"hotline\"]"),
            "route[1].peers[1]",
            "a route's peers share one interface",
        ),
    ];
    for (text, key, reason) in cases {
        let message = error_of(&text);
        assert!(
            message.contains(&format!("key `{key}`")) && message.contains(reason),
            "{key}: {message}"
        );
    }
}

#[test]
fn a_shared_store_needs_a_node_name_and_one_store_only() {
    let shared = sample().replace(
        "path = \"data/gateway.db\"",
        "url = \"postgresql://gateway:secret@10.2.0.5:5432/hotline\"",
    );
    let with_node = format!("{shared}\n[cluster]\nnode = \"gw-a\"\n");
    let config = match Config::parse(Path::new("test.toml"), &with_node) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    // The password is never shown.
    assert_eq!(
        config.store.location().to_string(),
        "postgresql://gateway@10.2.0.5:5432/hotline"
    );
    let cluster = config.cluster_options();
    assert_eq!(cluster.as_ref().map(|c| c.node.as_str()), Some("gw-a"));
    assert_eq!(
        cluster.map(|c| c.lease),
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(
        error_of(&shared),
        "test.toml: key `cluster.node`: a store shared by url needs this node's name ([cluster] node), unique among the nodes"
    );
    assert_eq!(
        error_of(&sample().replace("[store]\n", "[store]\nurl = \"postgresql://h/db\"\n")),
        "test.toml: key `store.url`: path and url are one or the other: the records live in one store"
    );
    assert_eq!(
        error_of(&sample().replace("path = \"data/gateway.db\"", "")),
        "test.toml: key `store.path`: missing: give path (the embedded SQLite file) or url (a PostgreSQL database several nodes share)"
    );
    assert_eq!(
        error_of(&format!("{}\n[cluster]\nnode = \"gw-a\"\n", sample())),
        "test.toml: key `cluster`: [cluster] needs store.url: the nodes of a cluster share a PostgreSQL store"
    );
    let message = error_of(&shared.replace("postgresql://gateway:secret@", "mysql://"));
    assert!(
        message.starts_with("test.toml: key `store.url`: expected a postgresql:// URL"),
        "{message}"
    );
    assert_eq!(
        error_of(&format!("{shared}\n[cluster]\nnode = \"gw a\"\n")),
        "test.toml: key `cluster.node`: \"gw a\": 1 to 64 letters, digits, '-', '_' or '.'"
    );
    assert_eq!(
        error_of(&format!(
            "{shared}\n[cluster]\nnode = \"gw-a\"\nlease_secs = 1\n"
        )),
        "test.toml: key `cluster.lease_secs`: 1 is outside 3-300"
    );
}

/// The contract's `[recording]` keys load; the budget converts to bytes; a line and a number
/// can be kept out; zero is refused with the key named.
#[test]
fn recording_keys_load_and_are_checked() {
    let text = sample()
        + "\n[recording]\npath = \"recordings\"\nretention_days = 90\nmax_disk_mb = 2\nmin_free_mb = 1\n";
    let text = text.replacen("name = \"police\"", "name = \"police\"\nrecord = false", 1);
    let config = match Config::parse(Path::new("test.toml"), &text) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let settings = match &config.recording {
        Some(recording) => recording.settings(),
        None => panic!("no [recording]"),
    };
    assert_eq!(settings.path, Path::new("recordings"));
    assert_eq!(settings.retention_days, Some(90));
    assert_eq!(settings.max_disk_bytes, Some(2 * 1024 * 1024));
    assert_eq!(settings.min_free_bytes, Some(1024 * 1024));
    let router = crate::routing::Router::from(&config);
    assert!(router.peer_by_name("police").is_some_and(|p| !p.record));
    assert!(router.peer_by_name("hotline").is_some_and(|p| p.record));
    assert!(router.records("110"));
    for (key, line) in [
        ("recording.retention_days", "retention_days = 0"),
        ("recording.max_disk_mb", "max_disk_mb = 0"),
    ] {
        let text = sample() + &format!("\n[recording]\npath = \"r\"\n{line}\n");
        match Config::parse(Path::new("test.toml"), &text) {
            Ok(_) => panic!("{line} accepted"),
            Err(e) => assert!(e.to_string().contains(key), "{e}"),
        }
    }
    let text = sample().replacen("number = \"110\"", "number = \"110\"\nrecord = false", 1);
    let config = match Config::parse(Path::new("test.toml"), &text) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert!(!crate::routing::Router::from(&config).records("110"));
}

/// `[recording] siprec` names a peer that exists and may take plain RTP.
#[test]
fn the_siprec_peer_is_checked() {
    let recorder = "\n[[peer]]\nname = \"recorder\"\naddress = \"127.0.0.1:5100\"\n";
    let text = sample() + recorder + "\n[recording]\npath = \"r\"\nsiprec = \"recorder\"\n";
    match Config::parse(Path::new("test.toml"), &text) {
        Ok(config) => assert_eq!(
            config.recording.and_then(|r| r.siprec).as_deref(),
            Some("recorder")
        ),
        Err(e) => panic!("{e}"),
    }
    let wrong = [
        ("no [[peer]] is named \"nobody\"", String::new(), "nobody"),
        (
            "srtp = \"mandatory\"",
            "srtp = \"mandatory\"\n".to_string(),
            "recorder",
        ),
    ];
    for (reason, extra, name) in wrong {
        let text = sample()
            + recorder
            + &extra
            + &format!("\n[recording]\npath = \"r\"\nsiprec = \"{name}\"\n");
        match Config::parse(Path::new("test.toml"), &text) {
            Ok(_) => panic!("{reason} accepted"),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains("recording.siprec") && message.contains(reason),
                    "{message}"
                );
            }
        }
    }
}

/// `[announcements] transfer` is read at `--check`: a good prompt loads; a missing file or a
/// file that is no prompt is refused with the key, the file and the reason.
#[test]
fn announcement_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("transfer.wav");
    std::fs::write(&good, crate::media::prompt::wav_bytes(&[100; 8000])).unwrap();
    let stereo = dir.path().join("stereo.wav");
    let mut bytes = crate::media::prompt::wav_bytes(&[100; 8000]);
    bytes[22..24].copy_from_slice(&2u16.to_le_bytes());
    std::fs::write(&stereo, bytes).unwrap();
    let with = |path: &Path, extra: &str| {
        sample()
            + &format!(
                "\n[announcements]\ntransfer = \"{}\"\n{extra}",
                path.display()
            )
    };
    match Config::parse(Path::new("test.toml"), &with(&good, "gap_ms = 500\n")) {
        Ok(config) => {
            let announcements = &config.announcements;
            let prompt = announcements
                .prompt("transfer", &announcements.transfer)
                .unwrap();
            assert_eq!(prompt.duration_ms(), 1000);
        }
        Err(e) => panic!("{e}"),
    }
    for (path, extra, reason) in [
        (stereo.as_path(), "", "mono"),
        (
            Path::new("/nonexistent/transfer.wav"),
            "",
            "/nonexistent/transfer.wav",
        ),
        (good.as_path(), "gap_ms = 70000\n", "at most 60000"),
    ] {
        match Config::parse(Path::new("test.toml"), &with(path, extra)) {
            Ok(_) => panic!("{} accepted", path.display()),
            Err(e) => {
                let message = e.to_string();
                assert!(message.contains("announcements."), "{message}");
                assert!(message.contains(reason), "{message}");
            }
        }
    }
}

/// `[announcements.whisper]`: each class's file is checked like the other announcements,
/// and its platforms must be some peer's.
#[test]
fn whisper_files_and_platforms_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("urgent.wav");
    std::fs::write(&good, crate::media::prompt::wav_bytes(&[100; 4000])).unwrap();
    let with = |body: &str| sample() + "\n[announcements.whisper]\n" + body;
    let body = format!("platforms = [\"110\"]\nclass_d = \"{}\"\n", good.display());
    match Config::parse(Path::new("test.toml"), &with(&body)) {
        Ok(config) => {
            let whisper = &config.announcements.whisper;
            assert_eq!(whisper.platforms, vec!["110".to_string()]);
            assert!(whisper.class_d.is_some() && whisper.class_a.is_none());
        }
        Err(e) => panic!("{e}"),
    }
    for (body, key, reason) in [
        (
            "class_a = \"/nonexistent/a.wav\"\n".to_string(),
            "announcements.whisper.class_a",
            "/nonexistent/a.wav",
        ),
        (
            format!("platforms = [\"119\"]\nclass_d = \"{}\"\n", good.display()),
            "announcements.whisper.platforms[0]",
            "no [[peer]] has platform = \"119\"",
        ),
        (
            "class_e = \"x.wav\"\n".to_string(),
            "class_e",
            "unknown field",
        ),
    ] {
        match Config::parse(Path::new("test.toml"), &with(&body)) {
            Ok(_) => panic!("{body} accepted"),
            Err(e) => {
                let message = e.to_string();
                assert!(message.contains(key), "{message}");
                assert!(message.contains(reason), "{message}");
            }
        }
    }
}

/// `[hep]`: the capture server's address, and the capture agent id (2001 by default).
#[test]
fn hep_takes_a_concrete_collector_address() {
    let with = |body: &str| sample() + "\n[hep]\n" + body;
    match Config::parse(
        Path::new("test.toml"),
        &with("address = \"10.0.0.9:9060\"\n"),
    ) {
        Ok(config) => {
            let hep = config.hep.unwrap_or_else(|| panic!("no [hep]"));
            assert_eq!((hep.address.port(), hep.capture_id), (9060, 2001));
            assert_eq!(
                config.transport().hep.map(|h| h.collector),
                Some(hep.address)
            );
        }
        Err(e) => panic!("{e}"),
    }
    for (body, reason) in [
        ("address = \"0.0.0.0:9060\"\n", "hep.address"),
        ("address = \"10.0.0.9:0\"\n", "hep.address"),
        ("address = \"homer\"\n", "hep.address"),
        ("address = \"10.0.0.9:9060\"\nport = 1\n", "unknown field"),
    ] {
        match Config::parse(Path::new("test.toml"), &with(body)) {
            Ok(_) => panic!("{body} accepted"),
            Err(e) => assert!(e.to_string().contains(reason), "{e}"),
        }
    }
}

/// The platforms' reserves must leave calls for everyone else.
#[test]
fn reserved_calls_leave_room_for_the_rest() {
    let platform = |reserved: usize| {
        format!(
            "\n[[platform]]\nname = \"110\"\ntoken = \"token-of-the-110-platform\"\nreserved_calls = {reserved}\n"
        )
    };
    let text = sample().replacen("[sip]", "[sip]\nmax_calls = 10", 1);
    match Config::parse(Path::new("test.toml"), &(text.clone() + &platform(4))) {
        Ok(config) => assert_eq!(config.platforms[0].reserved_calls, 4),
        Err(e) => panic!("{e}"),
    }
    match Config::parse(Path::new("test.toml"), &(text + &platform(10))) {
        Ok(_) => panic!("a reserve of every call accepted"),
        Err(e) => assert!(e.to_string().contains("platform.reserved_calls"), "{e}"),
    }
}

/// Routes by time: `hours` and `days` read; of two routes for one number the first may have a
/// schedule; `[routing]` names what does not read.
#[test]
fn routes_by_time_are_read_and_checked() {
    let seats = "\n[[route]]\nnumber = \"12399\"\npeers = [\"hotline\"]\nhours = [\"08:30-17:30\"]\ndays = [\"workday\"]\n\
                 \n[[route]]\nnumber = \"12399\"\npeers = [\"police\"]\n";
    let text = sample() + seats + "\n[routing]\nutc_offset = \"+08:00\"\nholidays = [\"2026-10-01\"]\nworkdays = [\"2026-10-10\"]\n";
    match Config::parse(Path::new("test.toml"), &text) {
        Ok(config) => {
            let router = crate::routing::Router::from(&config);
            // Thursday 2026-10-01 09:00 in Beijing: a holiday, so the second route.
            let holiday =
                (crate::calendar::days_from_civil(2026, 10, 1).unwrap() * 1440 + 60) * 60_000;
            let first = router
                .route_at("12399", holiday)
                .and_then(|p| p.first().map(|p| p.name.clone()));
            assert_eq!(first.as_deref(), Some("police"));
        }
        Err(e) => panic!("{e}"),
    }
    let refused = [
        (
            sample() + "\n[[route]]\nnumber = \"12399\"\npeers = [\"hotline\"]\n\n[[route]]\nnumber = \"12399\"\npeers = [\"police\"]\n",
            "never would",
        ),
        (sample() + seats + "\n[routing]\nutc_offset = \"CST\"\n", "routing.utc_offset"),
        (sample() + seats + "\n[routing]\nholidays = [\"2026-02-30\"]\n", "routing.holidays"),
        (
            sample() + "\n[[route]]\nnumber = \"12399\"\npeers = [\"hotline\"]\nhours = [\"8-17\"]\n",
            "08:30-17:30",
        ),
        (
            sample() + "\n[[route]]\nnumber = \"12399\"\npeers = [\"hotline\"]\ndays = [\"weekend\"]\n",
            "restday",
        ),
    ];
    for (text, reason) in refused {
        match Config::parse(Path::new("test.toml"), &text) {
            Ok(_) => panic!("accepted: {reason}"),
            Err(e) => assert!(e.to_string().contains(reason), "{e}"),
        }
    }
}

/// `[[route]] queue_secs`, `queue_retry_secs` and `queue_max` convert to the route's queue; out
/// of range is refused with the key.
#[test]
fn route_queues_are_read_and_checked() {
    let route = |extra: &str| {
        sample() + &format!("\n[[route]]\nnumber = \"12399\"\npeers = [\"hotline\"]\n{extra}")
    };
    match Config::parse(
        Path::new("test.toml"),
        &route("queue_secs = 60\nqueue_retry_secs = 3\nqueue_max = 20\n"),
    ) {
        Ok(config) => {
            let router = crate::routing::Router::from(&config);
            assert_eq!(
                router.queue_at("12399", 0),
                Some(crate::routing::QueuePolicy {
                    wait: std::time::Duration::from_secs(60),
                    retry: std::time::Duration::from_secs(3),
                    overflow: Vec::new(),
                    line: std::sync::Arc::new(crate::routing::desks::WaitingLine::new(Some(20))),
                })
            );
            assert_eq!(router.queue_at("110", 0), None);
        }
        Err(e) => panic!("{e}"),
    }
    for (extra, key) in [
        ("queue_secs = 0\n", "queue_secs"),
        (
            "queue_secs = 60\nqueue_retry_secs = 0\n",
            "queue_retry_secs",
        ),
        ("overflow = [\"police\"]\n", "needs queue_secs"),
        ("queue_secs = 60\noverflow = [\"nowhere\"]\n", "overflow[0]"),
        ("queue_secs = 60\nqueue_max = 0\n", "route[2].queue_max"),
        ("queue_max = 5\n", "needs queue_secs"),
    ] {
        match Config::parse(Path::new("test.toml"), &route(extra)) {
            Ok(_) => panic!("{extra} accepted"),
            Err(e) => assert!(e.to_string().contains(key), "{e}"),
        }
    }
}

/// `[[peer]] max_calls` is the desk's capacity in the router; 0 is refused with the key.
#[test]
fn peer_max_calls_is_read_and_checked() {
    let text = sample().replacen("name = \"hotline\"", "name = \"hotline\"\nmax_calls = 8", 1);
    match Config::parse(Path::new("test.toml"), &text) {
        Ok(config) => {
            let router = crate::routing::Router::from(&config);
            let max = router.peer_by_name("hotline").and_then(|p| p.seats.max());
            assert_eq!(max, Some(8));
            let police = router.peer_by_name("police").and_then(|p| p.seats.max());
            assert_eq!(police, None, "no limit by default");
        }
        Err(e) => panic!("{e}"),
    }
    let text = sample().replacen("name = \"hotline\"", "name = \"hotline\"\nmax_calls = 0", 1);
    match Config::parse(Path::new("test.toml"), &text) {
        Ok(_) => panic!("max_calls = 0 accepted"),
        Err(e) => assert!(e.to_string().contains("max_calls"), "{e}"),
    }
}
