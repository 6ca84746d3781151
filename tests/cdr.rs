//! `[cdr] path`: a call transferred to 110 ends, and its detail record is appended to the
//! day's JSON Lines file: the same object, field by field and with its linkage, as
//! `calls --format json` reads from the store.

mod common;

use std::net::IpAddr;

use common::{establish, Gateway, Ua};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[tokio::test]
async fn an_ended_call_is_appended_to_the_days_file_as_the_store_has_it() {
    let cdr_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = cdr_dir.path().join("cdr");
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut police = Ua::bind("police", LOCALHOST).await;
    let cdr_path = path.clone();
    let mut gateway = Gateway::start_configured(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
            ("police", police.address, "platform = \"110\""),
        ],
        &[("12345", &["hotline"]), ("110", &["police"])],
        "",
        "",
        "",
        move |config| {
            config.cdr = Some(hotline_gateway::config::CdrConfig { path: cdr_path });
        },
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(gateway.sip);
    }
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let _police_rtp = common::refer_to_110_answered(&mut agent, &call, &mut police).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut police]).await;
    gateway
        .metric_reaches("hotline_cdr_written_total", 1.0)
        .await;

    let files: Vec<_> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    assert_eq!(files.len(), 1, "one day's file: {files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = &lines[0];
    let ended = hotline_gateway::calendar::rfc3339(line["ended_at"].as_i64().unwrap_or_default());
    assert_eq!(
        files[0].file_name().and_then(|n| n.to_str()),
        Some(format!("{}.jsonl", &ended[..10]).as_str()),
        "the file of the day (UTC) the call ended"
    );
    assert_eq!(line["caller"], "13800138000");
    assert_eq!(line["ended_by"], "caller");
    let linkages = line["linkages"].as_array().cloned().unwrap_or_default();
    assert_eq!(linkages.len(), 1, "the transfer: {line}");
    assert_eq!(linkages[0]["target"], "110");
    assert_eq!(linkages[0]["outcome"], "answered");

    let config = cdr_dir.path().join("gw.toml");
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &config,
        sample.replace("data/gateway.db", &gateway.db.display().to_string()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let export = std::process::Command::new(env!("CARGO_BIN_EXE_hotline-gateway"))
        .arg("--config")
        .arg(&config)
        .args(["calls", "--format", "json", "--since", "0"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stored: serde_json::Value = String::from_utf8_lossy(&export.stdout)
        .lines()
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no record in the store's export"));
    assert_eq!(line, &stored, "the file's line is the store's record");
    gateway.stop().await;
}
