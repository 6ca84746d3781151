//! A gateway's recordings (`[recording]`), read as an operator's tools would.

use std::path::PathBuf;
use std::time::Duration;

/// The recording's two channels and its JSON, once the JSON says the file is complete.
pub(crate) struct Recorded {
    pub left: Vec<i16>,
    pub right: Vec<i16>,
    pub sidecar: hotline_gateway::media::recording::Sidecar,
    pub path: PathBuf,
}

impl Recorded {
    /// Waits (bounded) for the recording at `path` to be completed, then reads it.
    pub(crate) async fn read(path: &str) -> Recorded {
        let path = PathBuf::from(path);
        let json = path.with_extension("json");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let sidecar = loop {
            let parsed: Option<hotline_gateway::media::recording::Sidecar> = std::fs::read(&json)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match parsed {
                Some(s) if s.complete => break s,
                _ if tokio::time::Instant::now() > deadline => {
                    panic!("recording {} not completed", path.display())
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(&bytes[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "stereo");
        assert_eq!(
            u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]),
            8000
        );
        let data = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as usize;
        assert_eq!(bytes.len(), 44 + data, "the header covers the file");
        let samples: Vec<i16> = bytes[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        Recorded {
            left: samples.iter().step_by(2).copied().collect(),
            right: samples.iter().skip(1).step_by(2).copied().collect(),
            sidecar,
            path,
        }
    }

    /// The offset of the last step named `name`, in ms.
    pub(crate) fn last_step(&self, name: &str) -> i64 {
        match self.sidecar.steps.iter().rev().find(|s| s.step == name) {
            Some(step) => step.offset_ms,
            None => panic!("no step {name}: {:?}", self.sidecar.steps),
        }
    }

    /// The call's length in ms (the `ended` step's offset).
    pub(crate) fn end_ms(&self) -> i64 {
        self.sidecar.duration_ms.unwrap_or_default() as i64
    }

    /// The offset of the first step named `name`, in ms.
    pub(crate) fn step(&self, name: &str) -> i64 {
        match self.sidecar.steps.iter().find(|s| s.step == name) {
            Some(step) => step.offset_ms,
            None => panic!("no step {name}: {:?}", self.sidecar.steps),
        }
    }
}
