//! The store's own tests: real SQLite files in temporary directories.
use super::*;

fn record(id: &str) -> CallRecord {
    CallRecord::started(CallStart {
        id,
        a_call_id: &format!("a-{id}"),
        caller: "13800138000",
        called: "12345",
        a_peer: "carrier",
        started_at: 1_700_000_000_000,
    })
}

fn directory() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    }
}

fn event(platform: &str, id: &str, call_id: &str, created_at: i64) -> NewEvent {
    NewEvent {
        platform: platform.into(),
        event_id: id.into(),
        call_id: call_id.into(),
        created_at,
        body: id.as_bytes().into(),
    }
}

#[tokio::test]
async fn the_outbox_numbers_events_as_it_commits_them_and_keeps_acknowledgements() {
    let dir = directory();
    let path = dir.path().join("gateway.db");
    let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut latest = store.outbox().subscribe("12345");
    let mut changes = Changes::default();
    changes.call_started(record("c1"));
    changes.events([
        event("12345", "a", "c1", 100),
        event("12345", "b", "c1", 200),
        event("110", "c", "c1", 150),
        event("12345", "d", "c1", 300),
    ]);
    assert_eq!(store.write(changes).await.ok(), Some(Written::Committed));
    // The streams were told before the writer answered.
    assert_eq!(*latest.borrow_and_update(), 3);
    assert_eq!(store.outbox().latest("110"), 1);
    let mut reader = OutboxReader::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let read: Vec<(u64, String)> = reader
        .read("12345", 1, 10)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|r| (r.sequence, r.event_id))
        .collect();
    assert_eq!(read, vec![(2, "b".to_string()), (3, "d".to_string())]);
    // The newest are in memory too, as the store has them.
    let from_memory = store.outbox().recent("12345", 1, 10);
    assert_eq!(from_memory, reader.read("12345", 1, 10).ok());

    let ack = |sequence| {
        let store = store.clone();
        async move { store.acknowledge("12345", sequence).await.ok() }
    };
    assert_eq!(ack(2).await, Some(Acknowledged::Advanced));
    assert_eq!(ack(2).await, Some(Acknowledged::Unchanged));
    assert_eq!(ack(1).await, Some(Acknowledged::Behind { current: 2 }));
    assert_eq!(ack(7).await, Some(Acknowledged::PastNewest { latest: 3 }));
    assert_eq!(store.outbox().acknowledged("12345"), 2);

    // Retention takes old events, but not those of a call still open.
    let mut ended = record("c2");
    ended.ended_at = Some(400);
    let mut changes = Changes::default();
    changes.call_ended(ended);
    changes.events([event("12345", "e", "c2", 250)]);
    store.write(changes).await.unwrap_or_else(|e| panic!("{e}"));
    store
        .prune_outbox(10_000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.flush().await.unwrap_or_else(|e| panic!("{e}"));
    let left: Vec<String> = reader
        .read("12345", 0, 10)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert_eq!(left, ["a", "b", "d"], "c1 is open, c2 has ended");
    assert_eq!(reader.oldest("12345").ok(), Some(1));
    store.shutdown().await.unwrap_or_else(|e| panic!("{e}"));

    // The next run goes on from the stored sequences and acknowledgement, even once
    // retention has taken every event.
    Connection::open(&path)
        .and_then(|c| c.execute_batch("DELETE FROM outbox"))
        .unwrap_or_else(|e| panic!("{e}"));
    let again = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.outbox().latest("12345"), 4);
    assert_eq!(again.outbox().acknowledged("12345"), 2);
    let mut changes = Changes::default();
    changes.events([event("12345", "f", "c3", 500)]);
    again.write(changes).await.unwrap_or_else(|e| panic!("{e}"));
    let read = reader.read("12345", 0, 10).unwrap_or_default();
    assert_eq!(read.iter().map(|r| r.sequence).collect::<Vec<_>>(), [5]);
}

/// A call's start and answer are waited for (a call that was carried has its record, with no
/// platform configured too); a step without events, start, answer or end is only queued; a
/// step with events waits for them.
#[tokio::test]
async fn only_what_must_be_on_disk_is_waited_for() {
    let dir = directory();
    let path = dir.path().join("gateway.db");
    let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut changes = Changes::default();
    changes.call_started(record("c1"));
    assert_eq!(store.write(changes).await.ok(), Some(Written::Committed));
    let mut changes = Changes::default();
    changes.call_answered("c1", "b", "hotline", 4);
    assert_eq!(store.write(changes).await.ok(), Some(Written::Committed));
    let mut changes = Changes::default();
    changes.linkage(LinkageRecord {
        id: "l1".into(),
        call_id: "c1".into(),
        ..LinkageRecord::default()
    });
    assert_eq!(store.write(changes).await.ok(), Some(Written::Queued));
    let mut changes = Changes::default();
    changes.call_answered("c1", "b", "hotline", 5);
    changes.events([event("110", "x", "c1", 5)]);
    assert_eq!(store.write(changes).await.ok(), Some(Written::Committed));
    assert_eq!(
        list_calls(&path, 1).ok().map(|c| c[0].answered_at),
        Some(Some(5)),
        "the record change and its event landed together"
    );
}

#[tokio::test]
async fn lifecycle_is_visible_to_readers() {
    let dir = directory();
    let path = dir.path().join("sub/gateway.db");
    let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    store
        .call_started(record("1"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .call_answered("1", "b-1", "hotline", 1_700_000_001_000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.flush().await.unwrap_or_else(|e| panic!("{e}"));
    let listed = list_calls(&path, 10).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed[0].b_peer.as_deref(), Some("hotline"));
    assert_eq!(listed[0].ended_at, None);
    let mut ended = listed[0].clone();
    ended.ended_at = Some(1_700_000_009_500);
    ended.ended_by = Some("caller".into());
    ended.final_status = Some(200);
    ended.rtp_a_to_b = 400;
    store
        .call_ended(ended.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        list_calls(&path, 10).unwrap_or_else(|e| panic!("{e}")),
        vec![ended]
    );
    let table = crate::cli::format_calls_table(&list_calls(&path, 10).unwrap_or_default());
    assert!(table.contains("2023-11-14 22:13:20.000"), "{table}");
    assert!(table.contains("8.5") && table.contains("400"), "{table}");
    store.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    // Reopening migrates nothing and keeps the data.
    let again = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list_calls(&path, 10).map(|l| l.len()).ok(), Some(1));
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_ends_are_all_committed() {
    let dir = directory();
    let path = dir.path().join("gateway.db");
    let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut tasks = Vec::new();
    for i in 0..5000 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = record(&i.to_string());
            r.ended_at = Some(1);
            store.call_ended(r).await
        }));
    }
    for task in tasks {
        assert!(matches!(task.await, Ok(Ok(Written::Committed))));
    }
    assert_eq!(list_calls(&path, 10_000).map(|l| l.len()).ok(), Some(5000));
}

/// Fills the database at `path` with a ballast table (as another program fills a shared
/// disk) and returns its size in bytes.
fn fill_with_ballast(path: &Path, bytes: u64) -> u64 {
    let other = Connection::open(path).unwrap_or_else(|e| panic!("{e}"));
    other
        .execute_batch("CREATE TABLE ballast (b BLOB)")
        .unwrap_or_else(|e| panic!("{e}"));
    let size = || -> u64 {
        other
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_or(0, |s| s as u64)
    };
    while size() < bytes {
        other
            .execute("INSERT INTO ballast VALUES (zeroblob(8192))", [])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    size()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_records_until_there_is_space_again() {
    let dir = directory();
    let path = dir.path().join("gateway.db");
    drop(Store::open(&path).unwrap_or_else(|e| panic!("{e}")));
    let full = fill_with_ballast(&path, 256 * 1024);
    let metrics = Arc::new(Metrics::new());
    let store = Store::open_with(
        &path,
        StoreOptions {
            max_size_bytes: Some(full),
            metrics: Some(Arc::clone(&metrics)),
            ..StoreOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..1000 {
        store
            .call_started(record(&i.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut ended = record("999");
    ended.ended_at = Some(2);
    let written = store
        .call_ended(ended)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(written, Written::Held);
    // Nothing can be flushed now, and the alert is up.
    assert!(store.flush().await.is_err());
    let render = metrics.render();
    assert!(render.contains("hotline_store_degraded 1"), "{render}");
    assert!(!render.contains("hotline_store_held_records 0"), "{render}");

    // Space comes back (the ballast goes): the next attempt writes everything, in order.
    Connection::open(&path)
        .and_then(|c| c.execute_batch("DROP TABLE ballast"))
        .unwrap_or_else(|e| panic!("{e}"));
    store.flush().await.unwrap_or_else(|e| panic!("{e}"));
    let calls = list_calls(&path, 10_000).unwrap_or_default();
    assert_eq!(calls.len(), 1000);
    assert!(calls.iter().any(|c| c.id == "999" && c.ended_at == Some(2)));
    let render = metrics.render();
    assert!(render.contains("hotline_store_degraded 0"), "{render}");
    assert!(render.contains("hotline_store_held_records 0"), "{render}");
    assert!(
        render.contains("hotline_store_records_lost_total 0"),
        "{render}"
    );
}

#[tokio::test]
async fn acknowledged_record_survives_without_shutdown() {
    let dir = directory();
    let path = dir.path().join("gateway.db");
    let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut r = record("crash");
    r.ended_at = Some(5);
    store.call_ended(r).await.unwrap_or_else(|e| panic!("{e}"));
    // No shutdown, no flush: as if the process were killed right here.
    std::mem::forget(store);
    let listed = list_calls(&path, 10).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].ended_at, Some(5));
}

#[tokio::test]
async fn calls_left_open_by_a_crash_are_closed_at_the_next_start_with_their_events() {
    let dir = directory();
    let path = dir.path().join("gateway.db");
    let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut answered = record("answered");
    answered.answered_at = Some(2);
    let mut changes = Changes::default();
    changes.call_started(answered);
    changes.linkage(LinkageRecord {
        id: "l1".into(),
        call_id: "answered".into(),
        from_peer: "hotline".into(),
        target: "110".into(),
        trigger: "api".into(),
        kind: "transfer".into(),
        requested_at: 3,
        ..LinkageRecord::default()
    });
    changes.events([
        event("12345", "offered", "answered", 1),
        event("110", "requested", "answered", 3),
        event("12345", "requested", "answered", 3),
    ]);
    store.write(changes).await.unwrap_or_else(|e| panic!("{e}"));
    store
        .call_started(record("ringing"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut done = record("done");
    done.ended_at = Some(3);
    done.ended_by = Some("caller".into());
    store
        .call_ended(done)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.flush().await.unwrap_or_else(|e| panic!("{e}"));
    // The process dies here; the next one starts.
    std::mem::forget(store);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    let recovery: Arc<Recovery> = Arc::new(move |call: &Interrupted, now: i64| {
        recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(call.clone());
        call.seen
            .iter()
            .map(|(platform, _)| NewEvent {
                platform: platform.clone(),
                event_id: format!("ended-{}", call.call.id),
                call_id: call.call.id.clone(),
                created_at: now,
                body: Vec::new().into(),
            })
            .collect()
    });
    let next = Store::open_with(
        &path,
        StoreOptions {
            recovery: Some(Arc::clone(&recovery)),
            ..StoreOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next.closed_at_start(), 2);
    let interrupted = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(interrupted.len(), 2);
    let call = &interrupted[0];
    assert_eq!(call.call.id, "answered");
    assert_eq!(
        call.linkages
            .iter()
            .map(|l| l.id.as_str())
            .collect::<Vec<_>>(),
        ["l1"]
    );
    assert_eq!(
        call.seen,
        [
            ("110".to_string(), b"requested".to_vec()),
            ("12345".to_string(), b"requested".to_vec())
        ],
        "each platform that saw the call, with the newest event it got"
    );
    assert!(
        interrupted[1].seen.is_empty(),
        "nobody saw the ringing call"
    );
    // The ending events follow each platform's sequence.
    assert_eq!(next.outbox().latest("12345"), 3);
    assert_eq!(next.outbox().latest("110"), 2);
    let mut reader = OutboxReader::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let last = reader.read("110", 1, 10).unwrap_or_default();
    assert_eq!(
        last.iter()
            .map(|r| (r.sequence, r.event_id.as_str()))
            .collect::<Vec<_>>(),
        [(2, "ended-answered")]
    );
    let calls = list_calls(&path, 10).unwrap_or_else(|e| panic!("{e}"));
    let find = |id: &str| {
        calls
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("no record {id}"))
    };
    let answered = find("answered");
    let now = answered.ended_at.unwrap_or_default();
    assert!(now > 1_000_000, "closed now");
    assert_eq!(
        (
            answered.ended_by.as_deref(),
            answered.end_reason.as_deref(),
            answered.final_status
        ),
        (Some("gateway"), Some("gateway restart"), Some(200))
    );
    assert_eq!(find("ringing").final_status, Some(503));
    assert_eq!(
        find("done").ended_by.as_deref(),
        Some("caller"),
        "untouched"
    );
    let linkage = list_linkages(&path, "answered").unwrap_or_default();
    assert_eq!(
        (linkage[0].outcome.as_deref(), linkage[0].sip_status),
        (Some("failed"), Some(503))
    );
    drop(next);
    let third = Store::open_with(
        &path,
        StoreOptions {
            recovery: Some(recovery),
            ..StoreOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(third.closed_at_start(), 0, "once");
    assert_eq!(third.outbox().latest("110"), 2);
}

#[test]
fn a_version_2_store_is_upgraded_and_keeps_its_linkages() {
    let dir = directory();
    let path = dir.path().join("gateway.db");
    let connection = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
    // The tables as version 2 left them, with one transfer on record.
    let v2 = "CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version VALUES (1); INSERT INTO schema_version VALUES (2);
        CREATE TABLE calls (id TEXT PRIMARY KEY, a_call_id TEXT NOT NULL, b_call_id TEXT,
          caller TEXT NOT NULL, called TEXT NOT NULL, a_peer TEXT NOT NULL, b_peer TEXT,
          started_at INTEGER NOT NULL, answered_at INTEGER, ended_at INTEGER, ended_by TEXT,
          end_reason TEXT, final_status INTEGER, rtp_a_to_b INTEGER NOT NULL DEFAULT 0,
          rtp_b_to_a INTEGER NOT NULL DEFAULT 0, rtp_dropped INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE linkages (id TEXT PRIMARY KEY, call_id TEXT NOT NULL, from_platform TEXT,
          from_peer TEXT NOT NULL, to_platform TEXT, to_peer TEXT, target TEXT NOT NULL,
          trigger TEXT NOT NULL, requested_at INTEGER NOT NULL, ringing_at INTEGER,
          answered_at INTEGER, ended_at INTEGER, outcome TEXT, sip_status INTEGER);
        INSERT INTO linkages (id, call_id, from_peer, target, trigger, requested_at)
          VALUES ('l1', 'c1', 'hotline', '110', 'refer', 1);";
    connection
        .execute_batch(v2)
        .unwrap_or_else(|e| panic!("{e}"));
    drop(connection);
    let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    drop(store);
    let linkages = list_linkages(&path, "c1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(linkages.len(), 1);
    assert_eq!(linkages[0].kind, "transfer");
    assert_eq!(linkages[0].incident_number, None);
    assert_eq!(
        list_conference_parties(&path, "c1").map(|p| p.len()).ok(),
        Some(0)
    );
}

#[test]
fn newer_schema_is_refused() {
    let dir = directory();
    let path = dir.path().join("gateway.db");
    let connection = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let _ = connection.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (9);");
    drop(connection);
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::SchemaTooNew {
            found: 9,
            supported: schema::SCHEMA_VERSION
        })
    ));
}

#[test]
fn civil_dates() {
    assert_eq!(format_time(0), "1970-01-01 00:00:00.000");
    assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00.000");
    assert_eq!(format_time(1_795_305_600_123), "2026-11-22 00:00:00.123");
}

#[test]
fn listing_a_missing_file_names_it() {
    let error = list_calls(Path::new("/nonexistent/dir/x.db"), 1);
    assert!(matches!(error, Err(StoreError::Open { .. })));
}

#[test]
fn memory_keeps_a_platforms_newest_events_without_a_gap() {
    let outbox = Outbox::default();
    let record = |sequence: u64, bytes: usize| OutboxRecord {
        platform: "110".into(),
        sequence,
        event_id: format!("e{sequence}"),
        body: vec![0; bytes].into(),
        ..OutboxRecord::default()
    };
    assert_eq!(outbox.recent("110", 0, 10), None, "nothing kept yet");
    for sequence in 1..=5000 {
        outbox.keep(record(sequence, 10));
    }
    // Nothing is handed out before it is announced.
    assert_eq!(outbox.recent("110", 4990, 100), Some(Vec::new()));
    outbox.announce("110", 4995);
    assert_eq!(outbox.recent("110", 4990, 100).map(|r| r.len()), Some(5));
    outbox.announce("110", 5000);
    // The oldest went (4,096 are kept): before them, the store must be read.
    assert_eq!(outbox.recent("110", 0, 10), None);
    let newest = outbox.recent("110", 4990, 100).unwrap_or_default();
    assert_eq!(
        newest.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        (4991..=5000).collect::<Vec<_>>()
    );
    assert_eq!(outbox.recent("110", 5000, 10), Some(Vec::new()));
    // Large events take their bytes' worth: a few big ones push the small ones out.
    for sequence in 5001..=5003 {
        outbox.keep(record(sequence, 3 * 1024 * 1024));
    }
    outbox.announce("110", 5003);
    assert_eq!(outbox.recent("110", 5000, 10), None, "over 8 MiB");
    assert_eq!(outbox.recent("110", 5001, 10).map(|r| r.len()), Some(2));
}

/// A schema-5 store that a killed run left with a call open: the upgrade drops the events in
/// the old encoding but keeps a marker per platform that saw the open call, so the first
/// start still ends it on the link, numbered after the old sequence; the markers go.
#[tokio::test]
async fn an_upgrade_after_a_crash_still_ends_the_open_calls_on_the_link() {
    let dir = directory();
    let path = dir.path().join("gateway.db");
    drop(Store::open(&path).unwrap_or_else(|e| panic!("{e}")));
    // Back to schema 5's shape, with what a killed run left.
    Connection::open(&path)
        .and_then(|c| {
            c.execute_batch(
                "DROP TABLE outbox_sequences; DROP INDEX outbox_call_id; DROP INDEX calls_open;
                 ALTER TABLE linkages DROP COLUMN incident_number;
                 ALTER TABLE linkages DROP COLUMN disposition;
                 ALTER TABLE linkages DROP COLUMN replied_at;
                 ALTER TABLE calls DROP COLUMN a_interface;
                 ALTER TABLE calls DROP COLUMN b_interface;
                 ALTER TABLE calls DROP COLUMN recording;
                 DELETE FROM schema_version WHERE version >= 6;
                 INSERT INTO calls (id, a_call_id, caller, called, a_peer, started_at)
                     VALUES ('open', 'a1', '13800138000', '12345', 'carrier', 1);
                 INSERT INTO calls (id, a_call_id, caller, called, a_peer, started_at, ended_at)
                     VALUES ('done', 'a2', '13800138000', '12345', 'carrier', 1, 2);
                 INSERT INTO outbox VALUES ('12345', 1, 'e1', 'done', 1, x'0801');
                 INSERT INTO outbox VALUES ('12345', 2, 'e2', 'open', 1, x'0802');
                 INSERT INTO outbox VALUES ('12345', 3, 'e3', 'open', 1, x'0803');
                 INSERT INTO outbox VALUES ('110', 1, 'e4', 'done', 1, x'0804');",
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    let recovery: Arc<Recovery> = Arc::new(move |call: &Interrupted, now: i64| {
        recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(call.seen.clone());
        call.seen
            .iter()
            .map(|(platform, _)| event(platform, "ended", &call.call.id, now))
            .collect()
    });
    let store = Store::open_with(
        &path,
        StoreOptions {
            recovery: Some(recovery),
            ..StoreOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.closed_at_start(), 1);
    assert_eq!(
        seen.lock().map(|s| s.clone()).unwrap_or_default(),
        [vec![("12345".to_string(), Vec::new())]],
        "one empty marker: the platform that saw the open call"
    );
    let mut reader = OutboxReader::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let left: Vec<(u64, String)> = reader
        .read("12345", 0, 10)
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.sequence, r.event_id))
        .collect();
    assert_eq!(
        left,
        [(4, "ended".to_string())],
        "after the old sequence; markers gone"
    );
    assert_eq!(store.outbox().latest("110"), 1, "its sequence goes on");
    assert!(reader.read("110", 0, 10).unwrap_or_default().is_empty());
    // Schema 7: calls from before interfaces were on the default one.
    let done = list_calls(&path, 10)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.id == "done");
    assert_eq!(done.map(|c| c.a_interface), Some("default".to_string()));
}
