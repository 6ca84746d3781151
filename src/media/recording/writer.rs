//! The recorder's thread: takes the relay's frames off the queue, places each at its position
//! in its recording, and appends to the files what both channels have passed (or what the
//! clock has, less [`LAG`], so a silent channel holds nothing back), then the header's sizes.
//! It also opens, marks and closes recordings for the calls' tasks, and every
//! [`HOUSEKEEPING`] applies the retention and the disk budget.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::forward::Forward;
use super::sidecar::{offset_ms, Sidecar};
use super::{files, wav, Chunk, Control, RecordingSettings, Shared, Step, FRAME, RATE};
use crate::metrics::{Counter, Gauge};

/// How far behind the clock the files are written: frames may come this late and still land.
const LAG: u64 = RATE * 600 / 1000;
/// A recording appends once this much is ready (and at its end).
const APPEND: u64 = RATE / 2;
/// How often the writer looks at the queue once it has emptied it (and at the control
/// messages, and what is ready to append).
const POLL: Duration = Duration::from_millis(10);
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// The retention is applied this often (and at start).
const EXPIRY: Duration = Duration::from_secs(3600);
/// A recording never buffers more than this ahead of what it wrote (a frame further out is
/// not the call's clock).
const MAX_PENDING: u64 = RATE * 10;
/// Frames taken off the queue between two looks at the control messages.
const BATCH: usize = 4096;

/// One open recording.
struct Open {
    file: File,
    wav: PathBuf,
    json: PathBuf,
    sidecar: Sidecar,
    start: Instant,
    /// Stereo frames written to the file.
    written: u64,
    /// Samples from `written` on, not yet written: one vector per channel (left, right), of
    /// one length. Placing a frame is then a copy, and appending an interleave of two slices.
    pending: [Vec<i16>; 2],
    /// Set once the call ended: completed when the queue has been emptied.
    closing: Option<Instant>,
    failed: bool,
    /// The channels sent on to a SIPREC recording server, as they are written.
    forward: Option<Forward>,
    /// Where a platform paused the recording (positions; the last one open while paused):
    /// what falls there is silence.
    silenced: Vec<(u64, Option<u64>)>,
}

impl Open {
    /// Frames pending.
    fn pending_len(&self) -> usize {
        self.pending[0].len()
    }

    /// Makes both channels hold at least `length` samples (silence added).
    fn pend(&mut self, length: usize) {
        if self.pending_len() < length {
            for channel in &mut self.pending {
                channel.resize(length, 0);
            }
        }
    }

    /// Paused (`paused`) or resumed at `position`. Applied as the frames go out (written,
    /// forwarded), [`LAG`] behind the clock: by then the pause and the resume of what goes
    /// are known, whichever order the frames and the command came in.
    fn pause(&mut self, position: u64, paused: bool) {
        let open = self.silenced.last().is_some_and(|(_, end)| end.is_none());
        match (paused, open) {
            (true, false) => self.silenced.push((position, None)),
            (false, true) => {
                if let Some((_, end)) = self.silenced.last_mut() {
                    *end = Some(position);
                }
            }
            _ => {}
        }
    }

    /// Silences what falls in a pause between positions `from` and `until` (pending there).
    fn silence(&mut self, from: u64, until: u64) {
        for (start, end) in &self.silenced {
            let first = (*start).max(from).max(self.written);
            let last = end.unwrap_or(u64::MAX).min(until);
            if first >= last {
                continue;
            }
            let (from, to) = (first - self.written, last - self.written);
            for channel in &mut self.pending {
                let to = (to as usize).min(channel.len());
                if let Some(samples) = channel.get_mut(from as usize..to) {
                    samples.fill(0);
                }
            }
        }
    }

    /// Sends the frames up to position `until` on to the recording server (silence where
    /// none came), if the recording has one.
    fn forward_until(&mut self, until: u64) {
        let Some(forward) = self.forward.as_mut() else {
            return;
        };
        let from = forward.sent().max(self.written);
        if until <= from {
            return;
        }
        let start = (from - self.written) as usize;
        let end = (until - self.written) as usize;
        self.pend(end);
        self.silence(from, until);
        let Some(forward) = self.forward.as_mut() else {
            return;
        };
        let [left, right] = &self.pending;
        forward.send(&left[start..end], &right[start..end]);
    }
}

struct Writer {
    settings: RecordingSettings,
    shared: Arc<Shared>,
    open: HashMap<u64, Open>,
    bytes: Vec<u8>,
    /// The bytes the directory holds (counted at start and at each expiry, added as written).
    disk: u64,
    dropped: u64,
    /// [`Control::Stop`] came.
    stopping: bool,
    /// The newest slot the calls' tasks have told of: a frame of an older slot not open is a
    /// straggler of an ended (or failed) recording, dropped without another look.
    newest_slot: u64,
}

/// The thread's body: until [`Control::Stop`] (then every open recording is completed).
pub(super) fn run(settings: RecordingSettings, frames: Receiver<Chunk>, shared: Arc<Shared>) {
    let root = settings.path.clone();
    let mut writer = Writer {
        disk: files::usage(&root),
        settings,
        shared,
        open: HashMap::new(),
        bytes: Vec::with_capacity(APPEND as usize * 8),
        dropped: 0,
        stopping: false,
        newest_slot: 0,
    };
    writer.expire();
    writer.check_budget();
    let mut housekeeping = Instant::now();
    let mut expiry = Instant::now();
    while !writer.stopping {
        // The calls' messages first, then a batch of frames: a call's end is acted on only
        // once the frames queued before it was told are in.
        writer.take_control();
        let mut taken = 0;
        for chunk in frames.try_iter().take(BATCH) {
            writer.place(chunk);
            taken += 1;
        }
        let emptied = taken < BATCH;
        let now = Instant::now();
        // The ended calls' last frames were queued before their end was told: once the queue
        // has been emptied they are in (or, on a queue that never empties, a while later).
        writer.complete_closing(emptied, now);
        writer.append_ready(now);
        if now.duration_since(housekeeping) >= HOUSEKEEPING {
            housekeeping = now;
            if now.duration_since(expiry) >= EXPIRY {
                expiry = now;
                writer.expire();
            }
            writer.check_budget();
        }
        writer.flush_counts();
        if emptied {
            // Polled, never woken: a relay worker's send then never pays for waking the
            // writer (a futex wake per frame was most of what recording cost per packet).
            std::thread::sleep(POLL);
        }
    }
    let ids: Vec<u64> = writer.open.keys().copied().collect();
    for slot in ids {
        writer.complete(slot, Instant::now());
    }
    writer.flush_counts();
}

impl Writer {
    /// Carries out the calls' tasks' messages (an ended call's recording is completed once
    /// the queue has been emptied, [`Writer::complete_closing`]).
    fn take_control(&mut self) {
        let messages = std::mem::take(
            &mut *self
                .shared
                .control
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for message in messages {
            match message {
                Control::Open {
                    slot,
                    sidecar,
                    start,
                } => {
                    self.newest_slot = self.newest_slot.max(slot);
                    self.open(slot, *sidecar, start);
                }
                Control::Mark { slot, at, step } => {
                    if let Some(open) = self.open.get_mut(&slot) {
                        let position = super::samples_in(at.saturating_duration_since(open.start));
                        match &step {
                            Step::Paused { .. } => open.pause(position, true),
                            Step::Resumed { .. } => open.pause(position, false),
                            _ => {}
                        }
                        open.sidecar.mark(offset_ms(open.start, at), step);
                        write_sidecar(open);
                    }
                }
                Control::Forward { slot, forward } => {
                    if let Some(open) = self.open.get_mut(&slot) {
                        open.forward = forward.map(|mut forward| {
                            forward.skip_to(open.written);
                            *forward
                        });
                    }
                }
                Control::Retarget {
                    slot,
                    to,
                    codec,
                    payload_type,
                } => {
                    if let Some(forward) = self.open.get_mut(&slot).and_then(|o| o.forward.as_mut())
                    {
                        forward.retarget(to, codec, payload_type);
                    }
                }
                Control::Close { slot, at } => {
                    if let Some(open) = self.open.get_mut(&slot) {
                        open.closing = Some(at);
                    }
                }
                Control::Stop => self.stopping = true,
            }
        }
    }

    /// Completes the recordings whose calls ended: all when the queue was `emptied`, else
    /// those ended more than a second before `now`.
    fn complete_closing(&mut self, emptied: bool, now: Instant) {
        let closing: Vec<(u64, Instant)> = self
            .open
            .iter()
            .filter_map(|(slot, open)| open.closing.map(|at| (*slot, at)))
            .filter(|(_, at)| {
                emptied || now.saturating_duration_since(*at) > Duration::from_secs(1)
            })
            .collect();
        for (slot, at) in closing {
            self.complete(slot, at);
        }
    }

    fn open(&mut self, slot: u64, sidecar: Sidecar, start: Instant) {
        let wav_path = self.settings.path.join(&sidecar.file);
        let json = wav_path.with_extension("json");
        let file = files::create(&wav_path).and_then(|file| {
            file.write_all_at(&wav::header(0), 0)?;
            Ok(file)
        });
        match file {
            Ok(file) => {
                self.disk += wav::HEADER;
                let open = Open {
                    file,
                    wav: wav_path,
                    json,
                    sidecar,
                    start,
                    written: 0,
                    pending: [Vec::new(), Vec::new()],
                    closing: None,
                    failed: false,
                    forward: None,
                    silenced: Vec::new(),
                };
                write_sidecar(&open);
                self.open.insert(slot, open);
            }
            Err(error) => {
                self.shared.metrics.increment(Counter::RecordingWriteErrors);
                self.shared.metrics.add_gauge(Gauge::RecordingsActive, -1);
                tracing::error!(file = %wav_path.display(), %error, "recording not started");
            }
        }
    }

    /// One frame into its recording (a recording not yet open takes its messages first).
    fn place(&mut self, chunk: Chunk) {
        self.dropped += u64::from(chunk.dropped);
        if chunk.slot > self.newest_slot {
            self.take_control();
        }
        let Some(open) = self.open.get_mut(&chunk.slot) else {
            return;
        };
        let length = u64::from(chunk.length);
        if chunk.position + length <= open.written || chunk.position >= open.written + MAX_PENDING {
            self.dropped += 1;
            return;
        }
        let channel = chunk.channel as usize;
        // The part not yet written: from `skip` into the frame, at `start` in what is pending.
        let skip = open.written.saturating_sub(chunk.position);
        let start = (chunk.position + skip - open.written) as usize;
        let end = (chunk.position + length - open.written) as usize;
        open.pend(end);
        let samples = &chunk.samples[skip as usize..usize::from(chunk.length)];
        open.pending[channel][start..end].copy_from_slice(samples);
    }

    /// Appends, in every open recording, what the clock has passed by [`LAG`] once
    /// [`APPEND`]'s worth is ready; sends each whole frame of it on at once to a recording
    /// server.
    fn append_ready(&mut self, now: Instant) {
        let slots: Vec<u64> = self.open.keys().copied().collect();
        for slot in slots {
            let Some(open) = self.open.get_mut(&slot) else {
                continue;
            };
            let clock = super::samples_in(now.saturating_duration_since(open.start));
            // Whole frames only, so a forwarded stream's packets are 20 ms each.
            let until = clock.saturating_sub(LAG) / FRAME as u64 * FRAME as u64;
            if !open.failed {
                open.forward_until(until);
            }
            if until >= open.written + APPEND {
                self.append(slot, until);
            }
        }
    }

    /// Writes the recording's frames up to position `until` (silence where none came), then
    /// the header's sizes.
    fn append(&mut self, slot: u64, until: u64) {
        let Some(open) = self.open.get_mut(&slot) else {
            return;
        };
        if open.failed || until <= open.written {
            return;
        }
        open.forward_until(until);
        open.silence(open.written, until);
        let count = until - open.written;
        // Silence where nothing came; then the frames as WAV wants them (little-endian,
        // left first), in place in a buffer sized once.
        self.bytes.clear();
        self.bytes
            .resize(count as usize * wav::FRAME_BYTES as usize, 0);
        let [left, right] = &open.pending;
        for ((out, left), right) in self.bytes.chunks_exact_mut(4).zip(left).zip(right) {
            out[..2].copy_from_slice(&left.to_le_bytes());
            out[2..].copy_from_slice(&right.to_le_bytes());
        }
        let offset = wav::HEADER + open.written * wav::FRAME_BYTES;
        // The header counts at most what 32 bits hold (about 37 hours); the samples go on.
        let data = u32::try_from((open.written + count) * wav::FRAME_BYTES).unwrap_or(u32::MAX - 3);
        let written = open
            .file
            .write_all_at(&self.bytes, offset)
            .and_then(|()| wav::set_sizes(&open.file, data));
        match written {
            Ok(()) => {
                let drained = (count as usize).min(open.pending_len());
                for channel in &mut open.pending {
                    channel.drain(..drained);
                }
                open.written = until;
                self.disk += self.bytes.len() as u64;
                self.shared
                    .metrics
                    .add(Counter::RecordingBytesWritten, self.bytes.len() as u64);
            }
            Err(error) => {
                open.failed = true;
                self.shared.metrics.increment(Counter::RecordingWriteErrors);
                tracing::error!(file = %open.wav.display(), %error, "recording stopped: write failed");
            }
        }
    }

    /// The call ended at `at`: everything up to then written, the JSON completed, closed.
    fn complete(&mut self, slot: u64, at: Instant) {
        let Some(start) = self.open.get(&slot).map(|open| open.start) else {
            return;
        };
        let end = super::samples_in(at.saturating_duration_since(start));
        let pending = self
            .open
            .get(&slot)
            .map_or(0, |o| o.written + o.pending_len() as u64);
        self.append(slot, end.max(pending));
        if let Some(mut open) = self.open.remove(&slot) {
            open.sidecar.ended(open.written * 1000 / RATE);
            write_sidecar(&open);
            self.shared.metrics.add_gauge(Gauge::RecordingsActive, -1);
        }
    }

    fn expire(&mut self) {
        let Some(days) = self.settings.retention_days else {
            return;
        };
        let (deleted, freed) = files::expire(&self.settings.path, days, SystemTime::now());
        if deleted > 0 {
            tracing::info!(deleted, freed, "recordings past the retention deleted");
            self.shared.metrics.add(Counter::RecordingsDeleted, deleted);
        }
        self.disk = files::usage(&self.settings.path);
    }

    /// Whether new calls may be recorded: under `max_disk_mb`, over `min_free_mb`. Said once
    /// in the log each way.
    fn check_budget(&mut self) {
        let over = self
            .settings
            .max_disk_bytes
            .is_some_and(|max| self.disk >= max);
        let low = self.settings.min_free_bytes.is_some_and(|min| {
            files::free_bytes(&self.settings.path).is_some_and(|free| free < min)
        });
        let full = over || low;
        let metrics = &self.shared.metrics;
        metrics.set_gauge(Gauge::RecordingDiskBytes, self.disk as i64);
        metrics.set_gauge(Gauge::RecordingFull, i64::from(full));
        if self.shared.full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::warn!(
                    bytes = self.disk,
                    over_max_disk = over,
                    below_min_free = low,
                    "recording disk budget reached: new calls are not recorded (calls go on)"
                );
            } else {
                tracing::info!(
                    bytes = self.disk,
                    "recording disk budget free again: new calls are recorded"
                );
            }
        }
    }

    fn flush_counts(&mut self) {
        let metrics = &self.shared.metrics;
        metrics.add(
            Counter::RecordingFramesDropped,
            std::mem::take(&mut self.dropped),
        );
        metrics.set_gauge(Gauge::RecordingDiskBytes, self.disk as i64);
    }
}

/// Rewrites the recording's JSON (whole, by rename); a failure is logged and counted.
fn write_sidecar(open: &Open) {
    let written = serde_json::to_vec_pretty(&open.sidecar)
        .map_err(std::io::Error::other)
        .and_then(|bytes| files::replace(&open.json, &bytes));
    if let Err(error) = written {
        tracing::error!(file = %open.json.display(), %error, "recording's JSON not written");
    }
}
