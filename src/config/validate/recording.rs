//! The checks of `[recording]` and `[announcements]`: what is written to disk and read from it.

use super::*;

impl Config {
    /// Checks `[recording]`.
    pub(super) fn check_recording(
        &self,
        invalid: Invalid,
        peers: &HashSet<&str>,
    ) -> Result<(), ConfigError> {
        let Some(recording) = &self.recording else {
            return Ok(());
        };
        if recording.path.as_os_str().is_empty() {
            return Err(invalid(
                "recording.path".into(),
                "must name a directory".into(),
            ));
        }
        for (key, value) in [
            (
                "recording.retention_days",
                recording.retention_days.map(u64::from),
            ),
            ("recording.max_disk_mb", recording.max_disk_mb),
            ("recording.min_free_mb", recording.min_free_mb),
        ] {
            if value == Some(0) {
                return Err(invalid(
                    key.into(),
                    "must be at least 1 (leave it out for none)".into(),
                ));
            }
        }
        if let Some(siprec) = &recording.siprec {
            if !peers.contains(siprec.as_str()) {
                return Err(invalid(
                    "recording.siprec".into(),
                    format!("no [[peer]] is named \"{siprec}\""),
                ));
            }
            // The recording streams go as plain RTP: a peer that must have SRTP would get
            // the calls' audio in clear.
            let mandatory = self
                .peers
                .iter()
                .any(|p| p.name == *siprec && p.srtp == crate::routing::SrtpMode::Mandatory);
            if mandatory {
                return Err(invalid(
                    "recording.siprec".into(),
                    format!(
                        "peer \"{siprec}\" has srtp = \"mandatory\"; the recording streams are sent as RTP (no SRTP to a recording server yet)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks `[announcements]`: each file is read and must be a prompt.
    pub(super) fn check_announcements(&self, invalid: Invalid) -> Result<(), ConfigError> {
        let announcements = &self.announcements;
        if announcements.gap_ms > 60_000 {
            return Err(invalid(
                "announcements.gap_ms".into(),
                "must be at most 60000".into(),
            ));
        }
        for (index, platform) in announcements.whisper.platforms.iter().enumerate() {
            if !self
                .peers
                .iter()
                .any(|peer| peer.platform.as_deref() == Some(platform.as_str()))
            {
                return Err(invalid(
                    format!("announcements.whisper.platforms[{index}]"),
                    format!("no [[peer]] has platform = \"{platform}\""),
                ));
            }
        }
        let whisper = announcements.whisper.files();
        for (key, path) in [
            ("announcements.transfer", &announcements.transfer),
            ("announcements.no_desk", &announcements.no_desk),
            ("announcements.queue", &announcements.queue),
        ]
        .into_iter()
        .chain(whisper)
        {
            if let Some(path) = path {
                crate::media::prompt::Prompt::load(path, announcements.gap_ms)
                    .map_err(|error| invalid(key.into(), error.to_string()))?;
            }
        }
        Ok(())
    }
}
