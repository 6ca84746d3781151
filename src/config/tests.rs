use super::*;

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
    assert_eq!(config.media.codecs, vec!["PCMA", "PCMU"]);
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
fn conversions_return_the_validated_values_and_refuse_what_validation_would() {
    let mut config = match Config::parse(Path::new("config/gateway.toml"), &sample()) {
        Ok(c) => c,
        Err(e) => panic!("sample must load: {e}"),
    };
    assert_eq!(
        config.codecs().ok(),
        Some(vec![
            crate::media::codec::Codec::Pcma,
            crate::media::codec::Codec::Pcmu
        ])
    );
    assert_eq!(
        config.guard_networks().map(|n| n.len()).ok(),
        Some(config.sip.allow.len())
    );
    // A tree changed after validation: the conversion says so instead of dropping the entry.
    config.sip.allow.push("ten/8".into());
    let index = config.sip.allow.len() - 1;
    match config.guard_networks() {
        Err(ConfigError::Unvalidated { key, .. }) => assert_eq!(key, format!("sip.allow[{index}]")),
        other => panic!("expected Unvalidated, got {:?}", other.map(|n| n.len())),
    }
    config.media.codecs.push("G729".into());
    let message = config.codecs().map(|c| c.len()).unwrap_err().to_string();
    assert!(
        message.contains("key `media.codecs[2]`: unknown codec \"G729\""),
        "{message}"
    );
}
