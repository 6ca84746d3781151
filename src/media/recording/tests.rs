use std::time::{Duration, Instant};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn tap_at(start: Instant) -> (Tap, mpsc::Receiver<Chunk>) {
    let (queue, frames) = mpsc::sync_channel(64);
    let sink = RecordingSink {
        slot: 1,
        start,
        queue,
    };
    (Tap::new(sink), frames)
}

/// A frame goes where the clock says, then follows on through jitter; a gap (a hold) starts
/// after silence; a channel running ahead (a burst) loses frames until the clock catches up.
#[test]
fn frames_are_placed_on_the_call_clock() {
    let start = Instant::now();
    let (mut tap, _frames) = tap_at(start);
    let said = Channel::Said;
    assert_eq!(tap.place(start + ms(1000), said, 160), Some(7840));
    // 15 ms late, then 10 ms early: jitter, the frames follow on.
    assert_eq!(tap.place(start + ms(1035), said, 160), Some(8000));
    assert_eq!(tap.place(start + ms(1050), said, 160), Some(8160));
    // The other channel has its own cursor on the same clock.
    assert_eq!(tap.place(start + ms(1020), Channel::Heard, 160), Some(8000));
    // Two seconds of nothing (a hold): after silence, at the clock.
    assert_eq!(tap.place(start + ms(3060), said, 160), Some(24320));
    // A burst of frames that all arrive at once: followed on until 200 ms ahead, then dropped.
    let placed = (0..20)
        .filter(|_| tap.place(start + ms(3080), said, 160).is_some())
        .count();
    assert_eq!(placed, 12, "up to 200 ms ahead of the clock");
    // Before the recording's start (a frame already on its way): at 0.
    let (mut early, _frames) = tap_at(start + ms(500));
    assert_eq!(early.place(start, said, 160), Some(0));
}

/// A full queue never blocks: the frame is counted and told with the next one that goes.
#[test]
fn a_full_queue_drops_and_counts() {
    let start = Instant::now();
    let (queue, frames) = mpsc::sync_channel(2);
    let mut tap = Tap::new(RecordingSink {
        slot: 7,
        start,
        queue,
    });
    for n in 0..5u64 {
        tap.record_linear(start + ms(20 * (n + 1)), Channel::Said, &[1; FRAME]);
    }
    let queued: Vec<Chunk> = frames.try_iter().collect();
    assert_eq!(queued.len(), 2);
    tap.record_linear(start + ms(120), Channel::Said, &[1; FRAME]);
    let next = frames.try_recv().unwrap();
    assert_eq!(next.dropped, 3);
    assert_eq!(next.position, 800);
}

/// The level of `frequency` in `samples` (Goertzel), 0 to about 1 for a full-scale tone.
fn level(samples: &[i16], frequency: f64) -> f64 {
    let omega = 2.0 * std::f64::consts::PI * frequency / RATE as f64;
    let coefficient = 2.0 * omega.cos();
    let (mut previous, mut before) = (0.0, 0.0);
    for sample in samples {
        let value = f64::from(*sample) / 32768.0 + coefficient * previous - before;
        before = previous;
        previous = value;
    }
    let power = previous * previous + before * before - coefficient * previous * before;
    2.0 * power.sqrt() / samples.len() as f64
}

fn tone(frequency: f64, from: usize, count: usize) -> Vec<i16> {
    (from..from + count)
        .map(|n| {
            let t = n as f64 / RATE as f64;
            (8000.0 * (2.0 * std::f64::consts::PI * frequency * t).sin()) as i16
        })
        .collect()
}

/// A recording through the writer: two tones on the two channels, a gap, a step marked; the
/// file is a valid stereo WAV of the call's length and the JSON marks the step.
#[test]
fn the_writer_interleaves_fills_gaps_and_marks_steps() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let settings = RecordingSettings {
        path: dir.path().to_path_buf(),
        retention_days: Some(30),
        max_disk_bytes: None,
        min_free_bytes: None,
        queue_frames: 1024,
    };
    let (recorder, writer) = Recorder::start(settings, Arc::clone(&metrics)).unwrap();
    let start = Instant::now();
    let recording = recorder
        .begin(
            RecordingStart {
                call_id: "0123456789abcdef",
                caller: "13800138000",
                called: "12345",
                caller_peer: "carrier",
                answered_peer: "hotline",
                platforms: vec!["12345".into()],
                offered: start - ms(3000),
                ringing: Some(start - ms(2500)),
            },
            start,
        )
        .unwrap();
    let mut tap = Tap::new(recording.sink());
    // Two seconds of the other side; the caller stops after one.
    for n in 0..100usize {
        let at = start + ms(20 * (n as u64 + 1));
        if n < 50 {
            tap.record_linear(at, Channel::Said, &tone(440.0, n * FRAME, FRAME));
        }
        tap.record_linear(at, Channel::Heard, &tone(880.0, n * FRAME, FRAME));
    }
    recording.mark(
        start + ms(1000),
        Step::TransferRequested {
            linkage_id: "l1".into(),
            target: "110".into(),
        },
    );
    let path = recording.path().to_path_buf();
    recording.end(start + ms(2000));
    recorder.stop();
    writer.join().unwrap();

    let bytes = std::fs::read(&path).unwrap();
    assert!(wav::is_ours(&bytes));
    let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap());
    assert_eq!(u64::from(data), 2 * RATE * wav::FRAME_BYTES, "two seconds");
    assert_eq!(bytes.len() as u64, wav::HEADER + u64::from(data));
    let samples: Vec<i16> = bytes[44..]
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    let second = RATE as usize;
    assert!(level(&left[..second], 440.0) > 0.2);
    assert!(level(&left[..second], 880.0) < 0.02);
    assert!(level(&right[..second], 880.0) > 0.2);
    assert!(level(&right[..second], 440.0) < 0.02);
    assert!(left[second..].iter().all(|s| *s == 0), "the gap is silence");
    assert!(level(&right[second..], 880.0) > 0.2);

    let json: Sidecar =
        serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
    assert!(json.complete);
    assert_eq!(json.duration_ms, Some(2000));
    let steps: Vec<(&str, i64)> = json
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.offset_ms))
        .collect();
    assert_eq!(
        steps,
        [
            ("offered", -3000),
            ("ringing", -2500),
            ("answered", 0),
            ("transfer_requested", 1000),
            ("ended", 2000)
        ]
    );
    assert_eq!(json.linkages, ["l1"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert_eq!(metrics.counter(Counter::RecordingsStarted), 1);
    assert_eq!(metrics.gauge(Gauge::RecordingsActive), 0);
}

/// A header a crash left behind (sizes behind the samples) is repaired; one that is right,
/// or a file that is not a recording's, is left alone.
#[test]
fn headers_are_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.wav");
    let mut bytes = wav::header(400).to_vec();
    bytes.extend(std::iter::repeat_n(1u8, 1000));
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    assert!(wav::repair(&file).unwrap());
    assert!(!wav::repair(&file).unwrap());
    let repaired = std::fs::read(&path).unwrap();
    assert_eq!(repaired[..44], wav::header(1000));
    std::fs::write(
        &path,
        b"not a wav file at all, but long enough to look at it",
    )
    .unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    assert!(!wav::repair(&file).unwrap());
}

/// A recorder writing into `path` (no retention, no budget).
fn recorder_in(path: &Path) -> (Recorder, std::thread::JoinHandle<()>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let settings = RecordingSettings {
        path: path.to_path_buf(),
        retention_days: None,
        max_disk_bytes: None,
        min_free_bytes: None,
        queue_frames: 1024,
    };
    let (recorder, writer) = Recorder::start(settings, Arc::clone(&metrics)).unwrap();
    (recorder, writer, metrics)
}

/// A call `call_id` from the citizen to 12345, answered at `start`.
fn answered(call_id: &str, start: Instant) -> RecordingStart<'_> {
    RecordingStart {
        call_id,
        caller: "13800138000",
        called: "12345",
        caller_peer: "carrier",
        answered_peer: "hotline",
        platforms: Vec::new(),
        offered: start,
        ringing: None,
    }
}

/// A recording forwarded to a SIPREC server: each channel is one RTP stream of 20 ms packets,
/// in order from the recording's start, in the server's codec, the left what the caller said.
#[test]
fn the_channels_go_on_as_two_rtp_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, writer, metrics) = recorder_in(dir.path());
    let start = Instant::now();
    let recording = recorder.begin(answered("00aa", start), start).unwrap();
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    let pool = crate::media::ports::PortPool::new(localhost, [41000, 41009], Arc::clone(&metrics));
    let servers: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| std::net::UdpSocket::bind((localhost, 0)).unwrap())
        .collect();
    let streams = [0, 1].map(|index| ForwardStream {
        sockets: pool.allocate().unwrap(),
        to: Some(servers[index].local_addr().unwrap()),
        ssrc: 100 + index as u32,
        sequence: 65_530,
        timestamp: u32::MAX - 500,
    });
    recording.forward(Some(Forward::new(streams, Codec::Pcmu, 0)));
    let mut tap = Tap::new(recording.sink());
    for n in 0..50usize {
        let at = start + ms(20 * (n as u64 + 1));
        tap.record_linear(at, Channel::Said, &tone(440.0, n * FRAME, FRAME));
        tap.record_linear(at, Channel::Heard, &tone(880.0, n * FRAME, FRAME));
    }
    recording.end(start + ms(1000));
    recorder.stop();
    writer.join().unwrap();

    for (index, (server, (hears, not))) in servers
        .iter()
        .zip([(440.0, 880.0), (880.0, 440.0)])
        .enumerate()
    {
        server.set_nonblocking(true).unwrap();
        let mut samples = Vec::new();
        let mut buffer = [0u8; 2048];
        let mut sequence = 0u16;
        while let Ok(length) = server.recv(&mut buffer) {
            let packet = &buffer[..length];
            assert_eq!(length, 12 + FRAME, "20 ms packets");
            assert_eq!(packet[1] & 0x7f, 0, "PCMU");
            assert_eq!(
                packet[1] & 0x80 != 0,
                sequence == 0,
                "the marker on the first"
            );
            // From their starts, through the wrap.
            let on_wire = u16::from_be_bytes([packet[2], packet[3]]);
            assert_eq!(on_wire, 65_530u16.wrapping_add(sequence));
            let timestamp = u32::from_be_bytes(packet[4..8].try_into().unwrap());
            assert_eq!(
                timestamp,
                (u32::MAX - 500).wrapping_add(u32::from(sequence) * FRAME as u32)
            );
            let ssrc = u32::from_be_bytes(packet[8..12].try_into().unwrap());
            assert_eq!(ssrc, 100 + index as u32);
            let mut decoded = [0i16; FRAME];
            mixer::decode(Codec::Pcmu, &packet[12..], &mut decoded);
            samples.extend_from_slice(&decoded);
            sequence += 1;
        }
        assert_eq!(samples.len(), RATE as usize, "one second, from the start");
        assert!(level(&samples, hears) > 0.2, "stream {index}");
        assert!(level(&samples, not) < 0.02, "stream {index}");
    }
}

/// A paused recording is silence on both channels from the pause to the resume, whichever
/// came first to the writer (the frames or the pause), and the JSON marks both with the
/// platform.
#[test]
fn a_pause_is_silence_on_both_channels_until_the_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, writer, _metrics) = recorder_in(dir.path());
    let start = Instant::now();
    let mut recording = recorder.begin(answered("00bb", start), start).unwrap();
    let mut tap = Tap::new(recording.sink());
    for n in 0..100usize {
        let at = start + ms(20 * (n as u64 + 1));
        tap.record_linear(at, Channel::Said, &tone(440.0, n * FRAME, FRAME));
        tap.record_linear(at, Channel::Heard, &tone(880.0, n * FRAME, FRAME));
        if n == 25 {
            assert!(recording.pause(start + ms(500), true, "12345"));
            assert!(
                !recording.pause(start + ms(600), true, "12345"),
                "paused already"
            );
        }
    }
    assert!(recording.pause(start + ms(1500), false, "12345"));
    let path = recording.path().to_path_buf();
    recording.end(start + ms(2000));
    recorder.stop();
    writer.join().unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let samples: Vec<i16> = bytes[44..]
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    let at = |ms: usize| ms * RATE as usize / 1000;
    for channel in [&left, &right] {
        assert!(channel[at(500)..at(1500)].iter().all(|s| *s == 0), "paused");
        assert!(channel[at(100)..at(490)].iter().any(|s| *s != 0));
        assert!(channel[at(1510)..at(1900)].iter().any(|s| *s != 0));
    }
    assert!(level(&left[at(1500)..at(2000)], 440.0) > 0.2);
    assert!(level(&right[at(1500)..at(2000)], 880.0) > 0.2);
    let json: Sidecar =
        serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
    let marks: Vec<(&str, i64, Option<&str>)> = json
        .steps
        .iter()
        .filter(|s| s.step.starts_with("recording_"))
        .map(|s| (s.step.as_str(), s.offset_ms, s.platform.as_deref()))
        .collect();
    assert_eq!(
        marks,
        [
            ("recording_paused", 500, Some("12345")),
            ("recording_resumed", 1500, Some("12345"))
        ]
    );
}
