//! `[cdr] path`: each ended call's detail record appended, as one JSON line (the format of
//! `calls --format json`, as the call stood at its end: a later reply of the receiving
//! platform, and on a cluster the node's name, are in the store's only), to the day's file
//! `path/YYYY-MM-DD.jsonl` (the UTC date of the call's end), after the store took the
//! record (committed, or held while its disk is full). A writer thread of its own does the file
//! I/O; a call's task only queues the record, so a slow disk never holds up a call. A full
//! queue or a failed write loses the line (counted and logged), never the store's record.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::metrics::{Counter, Metrics};
use crate::store::CallDetail;

/// Records waiting for the writer; beyond, new ones are lost.
const QUEUE: usize = 16_384;

enum Line {
    Call(Box<CallDetail>),
    /// Everything queued before is written: the thread ends.
    Stop,
}

/// Where the calls' tasks queue their records. Cheap to clone.
#[derive(Clone)]
pub struct CdrFile {
    queue: SyncSender<Line>,
    metrics: Arc<Metrics>,
}

impl CdrFile {
    /// Makes `dir` if missing and starts the writer thread.
    ///
    /// # Errors
    /// The directory cannot be made, or the thread started.
    pub fn start(
        dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(CdrFile, std::thread::JoinHandle<()>)> {
        std::fs::create_dir_all(&dir)?;
        let (queue, lines) = sync_channel(QUEUE);
        let writer_metrics = Arc::clone(&metrics);
        let writer = std::thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || write_lines(&dir, &lines, &writer_metrics))?;
        Ok((CdrFile { queue, metrics }, writer))
    }

    /// Queues an ended call's record for its day's file.
    pub fn write(&self, detail: CallDetail) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Line::Call(Box::new(detail)))
        {
            self.metrics.increment(Counter::CdrLost);
        }
    }

    /// Writes what is queued, then ends the writer (the gateway is stopping).
    pub fn stop(&self) {
        let _ = self.queue.send(Line::Stop);
    }
}

fn write_lines(dir: &Path, lines: &Receiver<Line>, metrics: &Metrics) {
    while let Ok(Line::Call(detail)) = lines.recv() {
        let ended = detail.call.ended_at.unwrap_or(detail.call.started_at);
        let day = &crate::calendar::rfc3339(ended)[..10];
        let path = dir.join(format!("{day}.jsonl"));
        let line = crate::cdr::json_lines(std::slice::from_ref(&detail));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        match written {
            Ok(()) => metrics.increment(Counter::CdrWritten),
            Err(error) => {
                metrics.increment(Counter::CdrLost);
                tracing::error!(path = %path.display(), %error, call = %detail.call.id, "CDR line not written");
            }
        }
    }
}
