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

/// The contract's sample in a temporary directory, its store there too: the directory (kept
/// while the test runs), the config file and the store's path.
fn sample_with_store() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("gw.toml");
    let db = dir.path().join("gw.db");
    let sample = std::fs::read_to_string("config/gateway.toml").unwrap_or_default();
    std::fs::write(
        &config,
        sample.replace("data/gateway.db", &db.display().to_string()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (dir, config, db)
}

#[test]
fn calls_lists_records_and_reports_a_missing_store() {
    let (_dir, config, db) = sample_with_store();
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

/// `calls --format json|csv --since`: the call detail records of a store with known calls
/// (one transferred to 110, with its linkage; one older, outside `--since`) come out in order
/// and read back as the same records: every field of the call, and its linkages.
#[test]
fn calls_export_json_and_csv_round_trip_the_records() {
    use hotline_gateway::store::{CallRecord, Changes, LinkageRecord};
    let (_dir, config, db) = sample_with_store();
    let call = |id: &str, started_at: i64| CallRecord {
        id: id.into(),
        a_call_id: format!("{id}-a@x"),
        b_call_id: Some(format!("{id}-b@y")),
        caller: "13800138000".into(),
        called: "12345".into(),
        a_peer: "carrier".into(),
        b_peer: Some("police".into()),
        a_interface: "default".into(),
        b_interface: Some("default".into()),
        started_at,
        answered_at: Some(started_at + 1000),
        ended_at: Some(started_at + 61_000),
        ended_by: Some("caller".into()),
        end_reason: Some("normal clearing, \"as usual\"".into()),
        final_status: Some(200),
        rtp_a_to_b: 3000,
        rtp_b_to_a: 2999,
        rtp_dropped: 1,
        node: String::new(),
        recording: None,
    };
    let (old, transferred) = (call("c0", 1_795_300_000_000), call("c1", 1_795_305_600_000));
    let linkage = LinkageRecord {
        id: "lk1".into(),
        call_id: "c1".into(),
        from_platform: Some("12345".into()),
        from_peer: "hotline".into(),
        to_platform: Some("110".into()),
        to_peer: Some("police".into()),
        target: "110".into(),
        trigger: "refer".into(),
        kind: "transfer".into(),
        requested_at: 1_795_305_620_000,
        ringing_at: Some(1_795_305_620_300),
        answered_at: Some(1_795_305_623_000),
        ended_at: Some(1_795_305_623_000),
        outcome: Some("answered".into()),
        sip_status: Some(200),
        incident_number: None,
        disposition: None,
        replied_at: None,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let store = hotline_gateway::store::Store::open(&db).unwrap_or_else(|e| panic!("{e}"));
        for record in [old.clone(), transferred.clone()] {
            let mut changes = Changes::default();
            changes.call_started(record.clone());
            if record.id == "c1" {
                changes.linkage(linkage.clone());
            }
            changes.call_ended(record);
            store.write(changes).await.unwrap_or_else(|e| panic!("{e}"));
        }
        store.flush().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let export = |format: &str| {
        let out = gateway()
            .arg("--config")
            .arg(&config)
            .args([
                "calls",
                "--format",
                format,
                "--since",
                "2026-11-22T08:00+08:00",
            ])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    let json = export("json");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "only the call since 2026-11-22 00:00 UTC: {json}"
    );
    assert_eq!(call_from_json(&lines[0]), transferred);
    assert_eq!(lines[0]["started"], "2026-11-22T00:00:00.000Z");
    let linkages = lines[0]["linkages"].as_array().cloned().unwrap_or_default();
    assert_eq!(linkages.len(), 1);
    assert_eq!(linkage_from_json(&linkages[0], "c1"), linkage);

    let csv = export("csv");
    let rows = csv_rows(&csv);
    assert_eq!(rows.len(), 2, "a header and the call: {csv}");
    let object: serde_json::Map<String, serde_json::Value> = rows[0]
        .iter()
        .zip(&rows[1])
        .map(|(name, cell)| {
            let value = match name.as_str() {
                _ if cell.is_empty() => serde_json::Value::Null,
                "started_at" | "answered_at" | "ended_at" | "final_status" | "rtp_a_to_b"
                | "rtp_b_to_a" | "rtp_dropped" => serde_json::from_str(cell).unwrap_or_default(),
                "linkages" => serde_json::from_str(cell).unwrap_or_default(),
                _ => serde_json::Value::from(cell.as_str()),
            };
            (name.clone(), value)
        })
        .collect();
    let object = serde_json::Value::Object(object);
    assert_eq!(call_from_json(&object), transferred, "the CSV's call");
    assert_eq!(
        object["linkages"].as_array().map(|l| l
            .iter()
            .map(|l| linkage_from_json(l, "c1"))
            .collect::<Vec<_>>()),
        Some(vec![linkage.clone()])
    );

    let bad = gateway()
        .arg("--config")
        .arg(&config)
        .args(["calls", "--format", "json", "--since", "yesterday"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since \"yesterday\""));
}

/// A call record read back from its JSON export.
fn call_from_json(v: &serde_json::Value) -> hotline_gateway::store::CallRecord {
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let opt = |k: &str| v[k].as_str().map(str::to_string);
    let ms = |k: &str| v[k].as_i64();
    hotline_gateway::store::CallRecord {
        id: text("id"),
        a_call_id: text("a_call_id"),
        b_call_id: opt("b_call_id"),
        caller: text("caller"),
        called: text("called"),
        a_peer: text("a_peer"),
        b_peer: opt("b_peer"),
        a_interface: text("a_interface"),
        b_interface: opt("b_interface"),
        started_at: ms("started_at").unwrap_or_default(),
        answered_at: ms("answered_at"),
        ended_at: ms("ended_at"),
        ended_by: opt("ended_by"),
        end_reason: opt("end_reason"),
        final_status: v["final_status"].as_u64().map(|s| s as u16),
        rtp_a_to_b: v["rtp_a_to_b"].as_u64().unwrap_or_default(),
        rtp_b_to_a: v["rtp_b_to_a"].as_u64().unwrap_or_default(),
        rtp_dropped: v["rtp_dropped"].as_u64().unwrap_or_default(),
        node: text("node"),
        recording: opt("recording"),
    }
}

/// A linkage record read back from its JSON export, nested in call `call_id`'s.
fn linkage_from_json(
    v: &serde_json::Value,
    call_id: &str,
) -> hotline_gateway::store::LinkageRecord {
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let opt = |k: &str| v[k].as_str().map(str::to_string);
    let ms = |k: &str| v[k].as_i64();
    hotline_gateway::store::LinkageRecord {
        id: text("id"),
        call_id: call_id.to_string(),
        from_platform: opt("from_platform"),
        from_peer: text("from_peer"),
        to_platform: opt("to_platform"),
        to_peer: opt("to_peer"),
        target: text("target"),
        trigger: text("trigger"),
        kind: text("kind"),
        requested_at: ms("requested_at").unwrap_or_default(),
        ringing_at: ms("ringing_at"),
        answered_at: ms("answered_at"),
        ended_at: ms("ended_at"),
        outcome: opt("outcome"),
        sip_status: v["sip_status"].as_u64().map(|s| s as u16),
        incident_number: opt("incident_number"),
        disposition: opt("disposition"),
        replied_at: ms("replied_at"),
    }
}

/// RFC 4180 rows: quoted cells may hold commas, doubled quotes and line breaks.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

/// `stats` on a store with known calls: three offered to 12345's desk (answered at 5 s,
/// answered at 30 s, abandoned) and one to 110, a transfer to 110 that connected after 3 s and
/// one that failed 486: the known answer rates, service level (20 s), waits before abandoning,
/// the route's figures and the linkage table.
#[test]
fn stats_gives_the_known_answer_rate_and_linkage_table() {
    use hotline_gateway::store::{CallRecord, Changes, LinkageRecord};
    let (_dir, config, db) = sample_with_store();
    let start = 1_795_305_600_000;
    let call = |id: &str, desk: &str, answered_after: Option<i64>, ended_by: &str| CallRecord {
        id: id.into(),
        a_call_id: format!("{id}@a"),
        b_call_id: None,
        caller: "13800138000".into(),
        called: "12345".into(),
        a_peer: "carrier".into(),
        b_peer: Some(desk.into()),
        a_interface: "default".into(),
        b_interface: None,
        started_at: start,
        answered_at: answered_after.map(|ms| start + ms),
        ended_at: Some(start + 60_000),
        ended_by: Some(ended_by.into()),
        end_reason: None,
        final_status: None,
        rtp_a_to_b: 0,
        rtp_b_to_a: 0,
        rtp_dropped: 0,
        node: String::new(),
        recording: None,
    };
    let linkage = |id: &str, answered: bool| LinkageRecord {
        id: id.into(),
        call_id: "c1".into(),
        from_platform: Some("12345".into()),
        from_peer: "hotline".into(),
        to_platform: Some("110".into()),
        to_peer: Some("police".into()),
        target: "110".into(),
        trigger: "refer".into(),
        kind: "transfer".into(),
        requested_at: start + 10_000,
        ringing_at: None,
        answered_at: answered.then_some(start + 13_000),
        ended_at: Some(start + 13_000),
        outcome: Some(if answered { "answered" } else { "failed" }.into()),
        sip_status: Some(if answered { 200 } else { 486 }),
        incident_number: None,
        disposition: None,
        replied_at: None,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let store = hotline_gateway::store::Store::open(&db).unwrap_or_else(|e| panic!("{e}"));
        let mut changes = Changes::default();
        for record in [
            call("c1", "hotline", Some(5_000), "callee"),
            call("c2", "hotline", Some(30_000), "caller"),
            call("c3", "hotline", None, "caller"),
            call("c4", "police", Some(2_000), "caller"),
        ] {
            changes.call_started(record.clone());
            changes.call_ended(record);
        }
        changes.linkage(linkage("l1", false));
        changes.linkage(linkage("l2", true));
        store.write(changes).await.unwrap_or_else(|e| panic!("{e}"));
        store.flush().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let out = gateway()
        .arg("--config")
        .arg(&config)
        .args(["stats", "--since", "2026-11-22"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |first: &str| -> Vec<String> {
        text.lines()
            .find(|line| line.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no {first} row: {text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // offered, answered, abandoned, answer rate, <= 20 s, answer p50 s, abandon p50 s
    assert_eq!(
        row("12345")[1..],
        ["3", "2", "1", "66.7%", "33.3%", "5.0", "60.0"],
        "{text}"
    );
    assert_eq!(
        row("110")[1..],
        ["1", "1", "0", "100.0%", "100.0%", "2.0", "-"],
        "{text}"
    );
    assert_eq!(
        row("hotline")[1..],
        ["3", "2", "1", "66.7%", "33.3%", "5.0", "60.0"],
        "{text}"
    );
    // The route table: every call dialled 12345 (the sample's route), whichever desk took it.
    let route = text
        .split("\nroute ")
        .nth(1)
        .and_then(|table| table.lines().find(|l| l.starts_with("12345")))
        .unwrap_or_else(|| panic!("no route table: {text}"));
    assert_eq!(
        route.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["4", "3", "1", "75.0%", "50.0%", "5.0", "60.0"],
        "{text}"
    );
    // kind, from, to, requested, connected, failed, answer p50 s, failed by status
    assert_eq!(
        row("transfer")[1..],
        ["12345", "110", "2", "1", "1", "3.0", "486:", "1"],
        "{text}"
    );
}
