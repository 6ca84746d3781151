//! Where recordings live and how they age: `YYYY/MM/DD/<call id>.wav` and `.json` under
//! `[recording] path` (the UTC date of the answer), directories 0750 and files 0640; the day
//! directories past the retention deleted whole; the bytes they take, for the disk budget.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::calendar::{civil_from_days, days_from_civil};

/// Days a recording is looked for by [`find`] at most (and when no retention is set).
const SEARCH_DAYS: u32 = 3660;

/// Makes `root` (0750) and proves it writable.
pub(super) fn prepare(root: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(root)?;
    let probe = root.join(".write-probe");
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(&probe)?;
    fs::remove_file(probe)
}

/// Days since 1970-01-01 (UTC) at `wall`.
fn day_of(wall: SystemTime) -> i64 {
    match wall.duration_since(UNIX_EPOCH) {
        Ok(since) => (since.as_secs() / 86_400) as i64,
        Err(_) => 0,
    }
}

fn day_directory(day: i64) -> String {
    let (year, month, day) = civil_from_days(day);
    format!("{year:04}/{month:02}/{day:02}")
}

/// `YYYY/MM/DD/<call id>.wav` for a call answered at `wall`.
pub fn relative_path(call_id: &str, wall: SystemTime) -> String {
    format!("{}/{call_id}.wav", day_directory(day_of(wall)))
}

/// Whether `id` may name a file: what the gateway's call ids are made of, nothing that climbs
/// out of the directory.
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The recording of call `id` under `root`, looked for in the day directories from `now` back
/// over `days` (the retention): its WAV and JSON paths.
pub fn find(
    root: &Path,
    id: &str,
    now: SystemTime,
    days: Option<u32>,
) -> Option<(PathBuf, PathBuf)> {
    if !plausible_id(id) {
        return None;
    }
    let today = day_of(now);
    let back = i64::from(days.unwrap_or(SEARCH_DAYS).min(SEARCH_DAYS));
    // Newest first (most downloads are of recent calls); one day ahead too, for a clock
    // stepped back since the call.
    for day in ((today - back)..=(today + 1)).rev() {
        let directory = root.join(day_directory(day));
        let wav = directory.join(format!("{id}.wav"));
        if wav.is_file() {
            return Some((wav, directory.join(format!("{id}.json"))));
        }
    }
    None
}

/// Opens a new recording's file (0640), making its day directory (0750).
pub(super) fn create(path: &Path) -> io::Result<fs::File> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)?;
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(path)
}

/// Writes `bytes` to `path` whole or not at all (a temporary file renamed over it), 0640.
pub(super) fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("json.tmp");
    {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&temporary)?;
        io::Write::write_all(&mut file, bytes)?;
    }
    fs::rename(temporary, path)
}

/// The day directories under `root`, oldest first, with their day numbers.
fn days(root: &Path) -> Vec<(i64, PathBuf)> {
    let mut found = Vec::new();
    let numbered = |path: &Path| -> Vec<(u32, PathBuf)> {
        let Ok(entries) = fs::read_dir(path) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.parse::<u32>().ok()?;
                e.file_type().ok()?.is_dir().then(|| (name, e.path()))
            })
            .collect()
    };
    for (year, year_path) in numbered(root) {
        for (month, month_path) in numbered(&year_path) {
            for (day, day_path) in numbered(&month_path) {
                if let Some(number) = days_from_civil(i64::from(year), month, day) {
                    found.push((number, day_path));
                }
            }
        }
    }
    found.sort();
    found
}

/// Deletes the day directories older than `retention_days` at `now`: the recordings deleted
/// (WAV files) and the bytes freed.
pub(super) fn expire(root: &Path, retention_days: u32, now: SystemTime) -> (u64, u64) {
    let oldest_kept = day_of(now) - i64::from(retention_days);
    let (mut deleted, mut freed) = (0, 0);
    for (day, path) in days(root) {
        if day >= oldest_kept {
            break;
        }
        if let Ok(entries) = fs::read_dir(&path) {
            for entry in entries.flatten() {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                if fs::remove_file(entry.path()).is_ok() {
                    freed += size;
                    if entry.path().extension().is_some_and(|e| e == "wav") {
                        deleted += 1;
                    }
                }
            }
        }
        let _ = fs::remove_dir(&path);
        // The month and year directories go when they empty (remove_dir refuses otherwise).
        if let Some(month) = path.parent() {
            let _ = fs::remove_dir(month);
            if let Some(year) = month.parent() {
                let _ = fs::remove_dir(year);
            }
        }
    }
    (deleted, freed)
}

/// The bytes the recordings under `root` take.
pub(super) fn usage(root: &Path) -> u64 {
    days(root)
        .iter()
        .filter_map(|(_, path)| fs::read_dir(path).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// The bytes free for an unprivileged writer on the file system of `root`.
pub(super) fn free_bytes(root: &Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(root).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Repairs the headers of the WAV files of the last two days (a crash mid-call leaves sizes a
/// little behind the samples): how many it changed.
pub(super) fn repair_recent(root: &Path, now: SystemTime) -> u64 {
    let today = day_of(now);
    let mut repaired = 0;
    for (_, path) in days(root).into_iter().filter(|(day, _)| *day >= today - 1) {
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "wav") {
                continue;
            }
            let file = fs::OpenOptions::new().read(true).write(true).open(&path);
            if let Ok(true) = file.and_then(|file| super::wav::repair(&file)) {
                tracing::warn!(file = %path.display(), "recording's WAV header repaired (the gateway stopped mid-call)");
                repaired += 1;
            }
        }
    }
    repaired
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn days_lay_out_as_dates() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_796_256_000); // 2026-12-03 00:00 UTC
        assert_eq!(relative_path("abc", wall), "2026/12/03/abc.wav");
    }

    #[test]
    fn ids_that_climb_out_are_not_looked_for() {
        let root = Path::new("/nonexistent");
        for id in ["", "..", "../etc/passwd", "a/b", ".hidden", "a b"] {
            assert!(find(root, id, SystemTime::now(), Some(1)).is_none());
            assert!(!plausible_id(id), "{id}");
        }
        assert!(plausible_id("0123456789abcdef"));
    }

    #[test]
    fn expired_days_are_deleted_and_kept_days_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_796_256_000);
        for (day, name) in [("2026/11/01", "old"), ("2026/12/02", "new")] {
            let path = dir.path().join(day);
            fs::create_dir_all(&path).unwrap();
            fs::write(path.join(format!("{name}.wav")), [0u8; 100]).unwrap();
            fs::write(path.join(format!("{name}.json")), b"{}").unwrap();
        }
        assert_eq!(usage(dir.path()), 204);
        assert_eq!(expire(dir.path(), 30, now), (1, 102));
        assert!(!dir.path().join("2026/11").exists());
        assert!(dir.path().join("2026/12/02/new.wav").exists());
        assert_eq!(usage(dir.path()), 102);
    }
}
