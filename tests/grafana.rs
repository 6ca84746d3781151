//! `deploy/grafana/hotline-gateway.json`: every series its panels query exists on the
//! gateway's `/metrics` after a call (the test parses both), so the dashboard an operator
//! imports shows data, not "No data" for a misspelt name.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::{establish, Gateway, Ua};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The `hotline_...` names in a PromQL expression.
fn series_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("hotline_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn every_series_the_dashboard_queries_is_on_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/hotline-gateway.json"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {e}"));
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut wanted = BTreeSet::new();
    for panel in &panels {
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(
            !targets.is_empty(),
            "a panel without a query: {}",
            panel["title"]
        );
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            let names = series_in(expr);
            assert!(!names.is_empty(), "{}: {expr}", panel["title"]);
            wanted.extend(names);
        }
    }

    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let unused = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap_or_else(|e| panic!("{e}"));
    let remote = unused.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let mut gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
            ("remote", remote, "platform = \"12345\"\nprobe_secs = 60"),
        ],
        &[("12345", &["hotline"])],
        "",
        "",
        "",
    )
    .await;
    for ua in [&mut citizen, &mut agent] {
        ua.set_gateway(gateway.sip);
    }
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    let (status, metrics) = gateway.http_get("/metrics").await;
    assert_eq!(status, 200);
    // A series is there with a value, or declared (`# TYPE`) before its first labelled row
    // (a desk or a linkage direction nothing has used yet).
    // A histogram declared is its `_bucket`, `_sum` and `_count` series.
    let present: BTreeSet<String> = metrics
        .lines()
        .flat_map(|line| match line.strip_prefix("# TYPE ") {
            Some(declared) => {
                let mut words = declared.split(' ');
                let name = words.next().unwrap_or_default();
                let mut names = vec![name.to_string()];
                if words.next() == Some("histogram") {
                    names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
                }
                names
            }
            None if line.starts_with('#') => Vec::new(),
            None => line
                .split(['{', ' '])
                .next()
                .map(str::to_string)
                .into_iter()
                .collect(),
        })
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !present.contains(name.as_str()))
        .collect();
    assert!(missing.is_empty(), "not on /metrics: {missing:?}");
    gateway.stop().await;
}
