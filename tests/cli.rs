//! The command line an operator types: `--check`, bad configs, `calls`, `events`.

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hotline-gateway"))
}

#[test]
fn check_accepts_the_contract_sample() {
    let output = gateway()
        .args(["--config", "config/gateway.toml", "--check"])
        .output();
    let output = output.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "config/gateway.toml: ok"
    );
}

/// Under a descriptor limit too small for what the configuration may hold open, `--check`
/// fails and names the keys (with room, the sample passes: above).
#[test]
fn check_says_when_the_descriptors_do_not_fit() {
    let binary = env!("CARGO_BIN_EXE_hotline-gateway");
    let under = |limit: u32| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n {limit} && exec \"$0\" --config config/gateway.toml --check"
            ))
            .arg(binary)
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let tight = under(256);
    assert_eq!(tight.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&tight.stderr);
    assert!(
        stderr.contains("config/gateway.toml")
            && stderr.contains("sip.max_tcp_connections")
            && stderr.contains("sip.max_calls")
            && stderr.contains("limit is 256"),
        "{stderr}"
    );
}

#[test]
fn check_names_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("bad.toml");
    let sample = std::fs::read_to_string("config/gateway.toml").unwrap_or_default();
    std::fs::write(
        &path,
        sample.replace("ports = [20000, 20999]", "ports = [20000, \"many\"]"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let output = gateway()
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("media.ports"),
        "{stderr}"
    );
    let missing = gateway()
        .args(["--config", "/nonexistent.toml", "--check"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.toml: cannot read"));
}

#[test]
fn calls_lists_records_and_reports_a_missing_store() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("gw.toml");
    let db = dir.path().join("gw.db");
    let sample = std::fs::read_to_string("config/gateway.toml").unwrap_or_default();
    std::fs::write(
        &config,
        sample.replace("data/gateway.db", &db.display().to_string()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let missing = gateway()
        .arg("--config")
        .arg(&config)
        .arg("calls")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("gw.db"));
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let store = hotline_gateway::store::Store::open(&db).unwrap_or_else(|e| panic!("{e}"));
        let record = hotline_gateway::store::CallRecord {
            id: "c1".into(),
            a_call_id: "a@x".into(),
            b_call_id: Some("b@y".into()),
            caller: "13800138000".into(),
            called: "12345".into(),
            a_peer: "carrier".into(),
            b_peer: Some("hotline".into()),
            a_interface: "default".into(),
            b_interface: Some("egov".into()),
            started_at: 1_795_305_600_000,
            answered_at: Some(1_795_305_601_000),
            ended_at: Some(1_795_305_661_000),
            ended_by: Some("caller".into()),
            end_reason: Some("normal clearing".into()),
            final_status: Some(200),
            rtp_a_to_b: 3000,
            rtp_b_to_a: 2999,
            rtp_dropped: 0,
            node: String::new(),
            recording: None,
        };
        store
            .call_ended(record)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
    let listed = gateway()
        .arg("--config")
        .arg(&config)
        .args(["calls", "--limit", "5"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success());
    assert!(
        stdout.contains("2026-11-22 00:00:00.000")
            && stdout.contains("13800138000")
            && stdout.contains("60.0"),
        "{stdout}"
    );
}

#[test]
fn events_for_a_platform_not_configured_says_so() {
    let output = gateway()
        .args([
            "--config",
            "config/gateway.toml",
            "events",
            "--platform",
            "119",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "hotline-gateway: no [[platform]] named \"119\" in the configuration"
    );
}

/// `--check` with the contract sample grown by an `[[interface]]` on the police network:
/// on this host (127.0.0.2 is ours) it passes; an address the host does not have is named
/// by its key; a peer naming an interface nobody configured is refused.
#[test]
fn check_refuses_interface_addresses_not_on_the_host() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sample = std::fs::read_to_string("config/gateway.toml").unwrap_or_default();
    let with_interface = |media: &str| {
        sample.replace(
            "platform = \"110\"\n",
            "platform = \"110\"\ninterface = \"police-net\"\n",
        ) + &format!(
            "\n[[interface]]\nname = \"police-net\"\nsip = \"127.0.0.2:5060\"\n\
             media = \"{media}\"\nports = [22000, 22999]\n"
        )
    };
    let check = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let output = gateway()
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (status, stderr) = check("ok.toml", with_interface("127.0.0.2"));
    assert_eq!(status, Some(0), "{stderr}");
    // 192.0.2.0/24 is documentation's (RFC 5737): no host of ours has it.
    let (status, stderr) = check("elsewhere.toml", with_interface("192.0.2.7"));
    assert_eq!(status, Some(2));
    assert!(
        stderr.contains(
            "elsewhere.toml: key `interface[0].media`: 192.0.2.7 is not an address of this host"
        ),
        "{stderr}"
    );
    let (status, stderr) = check(
        "unknown.toml",
        with_interface("127.0.0.2").replace("interface = \"police-net\"", "interface = \"police\""),
    );
    assert_eq!(status, Some(2));
    assert!(
        stderr.contains("key `peer[2].interface`: no [[interface]] is named \"police\""),
        "{stderr}"
    );
}
