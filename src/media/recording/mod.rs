//! Call recording (录音): one stereo WAV per answered call, left what the caller (leg A, the
//! citizen) said, right what the caller heard (the agent, then 110 after a transfer, or the
//! conference's N-1 mix), with a JSON file beside it that marks each linkage step.
//!
//! The relay taps its decoded streams ([`Tap`], sans-IO, one per recorded call): each frame the
//! caller sends or is sent, after SRTP and before or after transcoding, is placed on the
//! recording's clock ([`Tap::place`]) and handed to the writer thread over a bounded queue that
//! never blocks the packet path (a full queue drops the frame, counted, and leaves silence).
//! The writer ([`writer`]) interleaves the two channels, fills gaps with silence, appends to the
//! file and keeps its header true after every append; the call's task opens, marks and closes
//! the recording through [`Recorder`]. Files live under `[recording] path` as
//! `YYYY/MM/DD/<call id>.wav` and `.json` (the UTC date the call was answered) ([`files`]).

mod files;
mod forward;
mod sidecar;
pub mod wav;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::media::codec::Codec;
use crate::media::mixer;
use crate::metrics::{Counter, Gauge, Metrics};

pub use files::{find, relative_path};
pub use forward::{Forward, ForwardStream};
pub use sidecar::Sidecar;

/// The recordings' sample rate (G.711's), per channel.
pub const RATE: u64 = 8000;
/// The samples one queued frame holds at most: 20 ms.
pub const FRAME: usize = 160;

/// A frame that arrives this much later than the channel's last one ended starts after a gap
/// of silence (a hold, silence suppression, a transfer target not yet answering); closer, it
/// follows on, so network jitter does not chop the audio.
const GAP: u64 = RATE * 60 / 1000;
/// A channel whose frames come this far ahead of the clock (a burst after a stall, a sender
/// whose clock runs fast) drops them until the clock catches up, so the channels stay aligned.
const AHEAD: u64 = RATE * 200 / 1000;

/// Which channel of the stereo file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Left: what the caller said.
    Said = 0,
    /// Right: what the caller heard.
    Heard = 1,
}

/// Up to [`FRAME`] samples of one channel at `position` (samples from the recording's start).
#[derive(Clone, Copy)]
pub(crate) struct Chunk {
    slot: u64,
    channel: Channel,
    position: u64,
    length: u16,
    /// Frames of the call not recorded since its last frame queued (a full queue, a channel
    /// ahead of the clock), for the writer to count.
    dropped: u32,
    samples: [i16; FRAME],
}

/// Where a recorded call's relay sends its frames: the recording's slot and clock.
#[derive(Clone)]
pub struct RecordingSink {
    slot: u64,
    start: Instant,
    queue: SyncSender<Chunk>,
}

impl std::fmt::Debug for RecordingSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordingSink({})", self.slot)
    }
}

impl PartialEq for RecordingSink {
    fn eq(&self, other: &RecordingSink) -> bool {
        self.slot == other.slot
    }
}

impl Eq for RecordingSink {}

/// A recorded call's tap in the relay: places the caller's two directions on the recording's
/// clock and queues them. Pure but for the queue's `try_send`.
pub struct Tap {
    sink: RecordingSink,
    /// Each channel's next position, once it has had a frame.
    cursors: [Option<u64>; 2],
    /// Frames not recorded since the last one queued.
    unreported: u32,
}

impl Tap {
    pub fn new(sink: RecordingSink) -> Tap {
        Tap {
            sink,
            cursors: [None; 2],
            unreported: 0,
        }
    }

    /// A G.711 payload of `codec` on `channel`, received or sent at `now`. What cannot be
    /// recorded (a full queue, a channel ahead of the clock) is counted, never waited for.
    pub fn record(&mut self, now: Instant, channel: Channel, codec: Codec, payload: &[u8]) {
        self.queue(now, channel, payload.len(), |index, samples| {
            let part = payload.get(index * FRAME..).unwrap_or_default();
            mixer::decode(codec, part, samples);
        });
    }

    /// Linear samples on `channel` that ended at `now`; as [`Tap::record`].
    pub fn record_linear(&mut self, now: Instant, channel: Channel, samples: &[i16]) {
        self.queue(now, channel, samples.len(), |index, out| {
            let part = samples.get(index * FRAME..).unwrap_or_default();
            let count = part.len().min(out.len());
            out[..count].copy_from_slice(&part[..count]);
        });
    }

    /// Places `length` samples and queues them a [`FRAME`] at a time, each filled in place by
    /// `fill(frame index, samples)`.
    fn queue(
        &mut self,
        now: Instant,
        channel: Channel,
        length: usize,
        mut fill: impl FnMut(usize, &mut [i16]),
    ) {
        let frames = length.div_ceil(FRAME);
        let Some(position) = self.place(now, channel, length as u64) else {
            self.unreported = self.unreported.saturating_add(frames as u32);
            return;
        };
        for index in 0..frames {
            let part = (length - index * FRAME).min(FRAME);
            let mut chunk = Chunk {
                slot: self.sink.slot,
                channel,
                position: position + (index * FRAME) as u64,
                length: part as u16,
                dropped: self.unreported,
                samples: [0; FRAME],
            };
            fill(index, &mut chunk.samples[..part]);
            match self.sink.queue.try_send(chunk) {
                Ok(()) => self.unreported = 0,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.unreported = self.unreported.saturating_add(1);
                }
            }
        }
    }

    /// Where `length` samples that ended at `now` go on `channel`: right after the channel's
    /// last frame while that is within [`GAP`] behind and [`AHEAD`] ahead of the clock; after
    /// a gap of silence when further behind; nowhere (dropped) when further ahead.
    pub fn place(&mut self, now: Instant, channel: Channel, length: u64) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.sink.start);
        let clock = samples_in(elapsed);
        let cursor = &mut self.cursors[channel as usize];
        let position = match *cursor {
            Some(next) if next > clock + AHEAD => return None,
            Some(next) if next + GAP >= clock.saturating_sub(length) => next,
            _ => clock.saturating_sub(length),
        };
        *cursor = Some(position + length);
        Some(position)
    }
}

/// Samples in `elapsed` at [`RATE`].
fn samples_in(elapsed: Duration) -> u64 {
    (elapsed.as_micros() as u64).saturating_mul(RATE) / 1_000_000
}

/// The recorder's settings, from `[recording]`.
#[derive(Debug, Clone)]
pub struct RecordingSettings {
    pub path: PathBuf,
    /// Recordings older than this many days are deleted (None: kept).
    pub retention_days: Option<u32>,
    /// New calls are not recorded while the recordings take this many bytes or more.
    pub max_disk_bytes: Option<u64>,
    /// ... or while the file system has less free than this.
    pub min_free_bytes: Option<u64>,
    /// Frames the writer's queue holds (each 20 ms of one channel of one call).
    pub queue_frames: usize,
}

/// Why the recorder could not start.
#[derive(Debug, thiserror::Error)]
#[error("recording directory {path}: {source}")]
pub struct RecordingError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// What the call's task tells the writer.
enum Control {
    Open {
        slot: u64,
        sidecar: Box<Sidecar>,
        start: Instant,
    },
    Mark {
        slot: u64,
        at: Instant,
        step: Step,
    },
    /// The channels go on to a recording server from now on (or no longer).
    Forward {
        slot: u64,
        forward: Option<Box<Forward>>,
    },
    /// The streams go elsewhere from now on ([`Forward::retarget`]).
    Retarget {
        slot: u64,
        to: [Option<std::net::SocketAddr>; 2],
        codec: Codec,
        payload_type: u8,
    },
    Close {
        slot: u64,
        at: Instant,
    },
    Stop,
}

/// A step of the call, marked in the recording's JSON at its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    TransferRequested {
        linkage_id: String,
        target: String,
    },
    TransferRinging {
        linkage_id: String,
    },
    TransferAnswered {
        linkage_id: String,
    },
    TransferFailed {
        linkage_id: String,
        status: u16,
    },
    ConferenceRequested {
        linkage_id: String,
        target: String,
    },
    ConferenceJoined {
        party: u8,
        peer: String,
        number: String,
    },
    ConferenceLeft {
        party: u8,
    },
    /// The platforms the call involves now (who may download the recording).
    Platforms(Vec<String>),
    /// A platform paused the recording: silence from here on ...
    Paused {
        platform: String,
    },
    /// ... until it is resumed.
    Resumed {
        platform: String,
    },
}

struct Shared {
    queue: SyncSender<Chunk>,
    control: Mutex<Vec<Control>>,
    next_slot: AtomicU64,
    /// The disk budget is reached: new calls are not recorded.
    full: AtomicBool,
    /// [`Recorder::stop`] was called: nothing more is begun.
    stopped: AtomicBool,
    root: PathBuf,
    metrics: Arc<Metrics>,
}

/// The recorder: its writer thread and the way the calls' tasks reach it. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

/// What a call's recording starts from.
#[derive(Debug, Clone)]
pub struct RecordingStart<'a> {
    pub call_id: &'a str,
    pub caller: &'a str,
    pub called: &'a str,
    pub caller_peer: &'a str,
    pub answered_peer: &'a str,
    pub platforms: Vec<String>,
    /// When the call was offered and first rang (marked before the recording's start).
    pub offered: Instant,
    pub ringing: Option<Instant>,
}

impl Recorder {
    /// Makes the directory (0750), repairs the headers of the last two days' files a crash
    /// left behind, and starts the writer thread, which first applies the retention and the
    /// budget.
    ///
    /// # Errors
    /// The directory cannot be made or written.
    pub fn start(
        settings: RecordingSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(Recorder, std::thread::JoinHandle<()>), RecordingError> {
        files::prepare(&settings.path).map_err(|source| RecordingError {
            path: settings.path.clone(),
            source,
        })?;
        // Before the gateway says it listens: a file a crash left is whole again by then.
        let repaired = files::repair_recent(&settings.path, SystemTime::now());
        if repaired > 0 {
            tracing::warn!(repaired, "recordings repaired at start");
        }
        let (queue, frames) = mpsc::sync_channel(settings.queue_frames.max(1));
        let shared = Arc::new(Shared {
            queue,
            control: Mutex::new(Vec::new()),
            next_slot: AtomicU64::new(1),
            full: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            root: settings.path.clone(),
            metrics,
        });
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || writer::run(settings, frames, thread_shared))
            .map_err(|source| RecordingError {
                path: PathBuf::new(),
                source,
            })?;
        Ok((Recorder { shared }, handle))
    }

    /// The directory recordings are kept under.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Starts recording an answered call at `now` (the recording's offset 0): None when the
    /// disk budget is reached (counted).
    pub fn begin(&self, start: RecordingStart<'_>, now: Instant) -> Option<Recording> {
        let metrics = &self.shared.metrics;
        if self.shared.stopped.load(Ordering::Relaxed) {
            return None;
        }
        if self.shared.full.load(Ordering::Relaxed) {
            metrics.increment(Counter::RecordingsRefused);
            return None;
        }
        let slot = self.shared.next_slot.fetch_add(1, Ordering::Relaxed);
        let wall = SystemTime::now();
        let relative = relative_path(start.call_id, wall);
        let sidecar = Sidecar::new(&start, &relative, wall, now);
        metrics.increment(Counter::RecordingsStarted);
        metrics.add_gauge(Gauge::RecordingsActive, 1);
        self.control(Control::Open {
            slot,
            sidecar: Box::new(sidecar),
            start: now,
        });
        Some(Recording {
            slot,
            start: now,
            paused: false,
            id: start.call_id.to_string(),
            path: self.shared.root.join(&relative),
            recorder: self.clone(),
        })
    }

    /// Ends the writer once it has closed every recording (the calls have ended).
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        self.control(Control::Stop);
    }

    fn control(&self, control: Control) {
        self.shared
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(control);
    }
}

/// One call's recording, held by its task: the relay's sink, the steps marked, the end.
pub struct Recording {
    slot: u64,
    start: Instant,
    /// A platform paused it.
    paused: bool,
    id: String,
    path: PathBuf,
    recorder: Recorder,
}

impl Recording {
    /// The recording's id (the call's id: `GET /recordings/<id>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The WAV file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For the relay ([`crate::media::MediaCommand::Record`]).
    pub fn sink(&self) -> RecordingSink {
        RecordingSink {
            slot: self.slot,
            start: self.start,
            queue: self.recorder.shared.queue.clone(),
        }
    }

    /// Marks `step` at `at` in the JSON.
    pub fn mark(&self, at: Instant, step: Step) {
        self.recorder.control(Control::Mark {
            slot: self.slot,
            at,
            step,
        });
    }

    /// Sends the two channels on to a SIPREC recording server as they are written (`None`:
    /// no longer).
    pub fn forward(&self, forward: Option<Forward>) {
        self.recorder.control(Control::Forward {
            slot: self.slot,
            forward: forward.map(Box::new),
        });
    }

    /// Pauses (`paused`) or resumes the recording at `at` for `platform`: both channels are
    /// silence while it is paused (in the file and the streams to a SIPREC server), and the
    /// JSON marks each change. False if it was so already (nothing marked).
    pub fn pause(&mut self, at: Instant, paused: bool, platform: &str) -> bool {
        if self.paused == paused {
            return false;
        }
        self.paused = paused;
        let platform = platform.to_string();
        let step = if paused {
            Step::Paused { platform }
        } else {
            Step::Resumed { platform }
        };
        self.mark(at, step);
        true
    }

    /// The recording server moved its streams: they go to `to` from now on.
    pub fn retarget(&self, to: [Option<std::net::SocketAddr>; 2], codec: Codec, payload_type: u8) {
        self.recorder.control(Control::Retarget {
            slot: self.slot,
            to,
            codec,
            payload_type,
        });
    }

    /// The call ended at `at`: the file is completed to that moment and closed.
    pub fn end(self, at: Instant) {
        self.recorder.control(Control::Close {
            slot: self.slot,
            at,
        });
    }
}

/// A sink on a queue of `frames` the test reads, as the relay's tests need.
#[cfg(test)]
pub(crate) fn test_sink(start: Instant, frames: usize) -> (RecordingSink, mpsc::Receiver<Chunk>) {
    let (queue, receiver) = mpsc::sync_channel(frames);
    let sink = RecordingSink {
        slot: 1,
        start,
        queue,
    };
    (sink, receiver)
}

#[cfg(test)]
impl Chunk {
    pub(crate) fn channel(&self) -> Channel {
        self.channel
    }

    pub(crate) fn samples(&self) -> &[i16] {
        &self.samples[..usize::from(self.length)]
    }
}

#[cfg(test)]
mod tests;
