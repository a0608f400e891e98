//! The state file (SPEC "State"): its format ([`Persisted`]), reading and checking it, and
//! writing it atomically (temporary file, fsync, rename). What goes into it is the store's
//! business ([`Store::persisted`](crate::store::Store::persisted)); this module only moves it
//! to and from disk.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::snapshot::{Attr, HASH48_MAX, Snapshot};

/// The state file's format version; a file with another one is ignored.
pub const STATE_FILE_VERSION: u32 = 1;

/// The state file: per app, per group, the latest snapshot. No values, and no counters (those are
/// process-local, as Prometheus counters are); see the [`store`](crate::store) module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persisted {
    pub version: u32,
    /// By `sdkappid`, then by group ID.
    pub apps: BTreeMap<u64, BTreeMap<String, PersistedGroup>>,
}

impl Default for Persisted {
    fn default() -> Persisted {
        Persisted {
            version: STATE_FILE_VERSION,
            apps: BTreeMap::new(),
        }
    }
}

/// One group's snapshot in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedGroup {
    /// Sorted by key, unique.
    pub attributes: Vec<PersistedAttribute>,
    /// [`set_hash`](crate::snapshot::set_hash) of the attributes.
    pub set_hash: u64,
    /// 0 when no change has been seen.
    pub last_change_timestamp_seconds: f64,
}

impl PersistedGroup {
    pub(crate) fn of(snapshot: &Snapshot, last_change: f64) -> PersistedGroup {
        PersistedGroup {
            attributes: snapshot
                .attrs
                .iter()
                .map(|a| PersistedAttribute {
                    key: a.key.to_string(),
                    hash: a.hash,
                    bytes: a.len,
                })
                .collect(),
            set_hash: snapshot.set_hash,
            last_change_timestamp_seconds: last_change,
        }
    }

    /// The snapshot and last change time this group's entry describes.
    pub(crate) fn into_snapshot(self) -> (Snapshot, f64) {
        let mut attributes = self.attributes;
        // Diffs walk both snapshots in key order; a hand-made `Persisted` may not be.
        attributes.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        attributes.dedup_by(|later, earlier| later.key == earlier.key);
        let attrs = attributes
            .into_iter()
            .map(|a| Attr {
                key: a.key.into_boxed_str(),
                hash: a.hash,
                len: a.bytes,
                // The config's `ignore_keys` are not the file's business: the store flags the
                // keys when it takes the snapshot in.
                ignored: false,
            })
            .collect();
        let snapshot = Snapshot {
            attrs,
            set_hash: self.set_hash,
        };
        (snapshot, self.last_change_timestamp_seconds)
    }
}

/// One attribute in the state file: its key, the [`hash48`](crate::snapshot::hash48) of its value
/// and the value's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedAttribute {
    pub key: String,
    pub hash: u64,
    pub bytes: u32,
}

/// Why a state file was not used. The daemon logs it and starts without baselines.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "state file {path} has version {found}, this exporter reads version {STATE_FILE_VERSION}"
    )]
    Version { path: PathBuf, found: u64 },
    #[error("state file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Reads and checks a state file. Anything wrong (unreadable, truncated, not JSON, another
/// version, hashes out of range, duplicate keys) is an error: never a panic, never half a state.
pub fn read_state_file(path: &Path) -> Result<Persisted, StateFileError> {
    let bytes = std::fs::read(path).map_err(|source| StateFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_state(&bytes).map_err(|e| e.at(path))
}

/// A [`StateFileError`] before the path is known.
pub(crate) enum ParseError {
    Json(serde_json::Error),
    Version(u64),
    Invalid(String),
}

impl ParseError {
    fn at(self, path: &Path) -> StateFileError {
        let path = path.to_owned();
        match self {
            ParseError::Json(source) => StateFileError::Parse { path, source },
            ParseError::Version(found) => StateFileError::Version { path, found },
            ParseError::Invalid(reason) => StateFileError::Invalid { path, reason },
        }
    }
}

/// [`read_state_file`] after the read; the store's tests check with it that whatever it persists
/// reads back.
pub(crate) fn parse_state(bytes: &[u8]) -> Result<Persisted, ParseError> {
    // The version first, so a file from a later format is reported as such rather than as a
    // parse error about whatever field changed.
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u64,
    }
    let v: VersionOnly = serde_json::from_slice(bytes).map_err(ParseError::Json)?;
    if v.version != u64::from(STATE_FILE_VERSION) {
        return Err(ParseError::Version(v.version));
    }
    let persisted: Persisted = serde_json::from_slice(bytes).map_err(ParseError::Json)?;
    for (sdkappid, groups) in &persisted.apps {
        for (group_id, g) in groups {
            let place = format!("apps.{sdkappid}.{group_id:?}");
            if g.set_hash > HASH48_MAX {
                return Err(ParseError::Invalid(format!(
                    "{place}: set_hash is not a 48-bit hash"
                )));
            }
            if !(g.last_change_timestamp_seconds.is_finite()
                && g.last_change_timestamp_seconds >= 0.0)
            {
                return Err(ParseError::Invalid(format!(
                    "{place}: last_change_timestamp_seconds is not a timestamp"
                )));
            }
            for a in &g.attributes {
                if a.hash > HASH48_MAX {
                    return Err(ParseError::Invalid(format!(
                        "{place}: the hash of {:?} is not a 48-bit hash",
                        a.key
                    )));
                }
            }
            let sorted_unique = g
                .attributes
                .windows(2)
                .all(|w| w[0].key.as_bytes() < w[1].key.as_bytes());
            if !sorted_unique {
                return Err(ParseError::Invalid(format!(
                    "{place}: attributes are not sorted by key and unique"
                )));
            }
        }
    }
    Ok(persisted)
}

/// Writes the state file atomically: a temporary file in the same directory, written and
/// fsynced, renamed over `path`, then the directory fsynced so the rename survives a crash.
/// A reader sees the old file or the new one, never a mix; the temporary file never outlives a
/// failed write.
pub fn write_state_file(path: &Path, persisted: &Persisted) -> std::io::Result<()> {
    let json = serde_json::to_vec(persisted).map_err(std::io::Error::other)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Opening a directory to fsync it works on Unix; elsewhere the rename is the best there is.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    remove_dead_writers_temp_files(&dir, name);
    Ok(())
}

/// A process killed mid-write (OOM, `kill -9`) leaves its temporary file behind; in a crash
/// loop they would pile up, each the size of the state. Removes those whose writer is gone
/// (no `/proc/PID`); a live writer's file is left alone. Where `/proc` does not exist, nothing
/// is removed.
fn remove_dead_writers_temp_files(dir: &Path, name: &std::ffi::OsStr) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{hash48, set_hash};
    use proptest::prelude::*;

    /// Group `g` of app 1 with `a=1` and `b=2`: what the store persists after one poll.
    fn sample() -> Persisted {
        let pairs = [("a", "1"), ("b", "2")];
        let group = PersistedGroup {
            attributes: pairs
                .iter()
                .map(|(k, v)| PersistedAttribute {
                    key: k.to_string(),
                    hash: hash48(v.as_bytes()),
                    bytes: 1,
                })
                .collect(),
            set_hash: set_hash(&pairs.map(|(k, v)| (k.to_string(), v.to_string()))),
            last_change_timestamp_seconds: 7.5,
        };
        let mut p = Persisted::default();
        p.apps.entry(1).or_default().insert("g".to_string(), group);
        p
    }

    #[test]
    fn state_file_round_trips_and_is_written_atomically() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        let persisted = sample();
        write_state_file(&path, &persisted).expect("written");
        // Overwrite works too, and leaves only the file itself.
        write_state_file(&path, &persisted).expect("rewritten");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        assert_eq!(read_state_file(&path).expect("valid"), persisted);
    }

    #[test]
    fn failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        // The target is a non-empty directory: the rename fails after the temp file was written.
        let path = dir.path().join("state.json");
        std::fs::create_dir(&path).expect("dir");
        std::fs::write(path.join("x"), b"x").expect("file");
        assert!(write_state_file(&path, &Persisted::default()).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn bad_state_files_are_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let valid = serde_json::to_string(&sample()).expect("serialisable");
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("truncated", valid[..valid.len() / 2].to_string()),
            ("not json", "hello".into()),
            (
                "foreign version",
                valid.replace("\"version\":1", "\"version\":2"),
            ),
            ("no version", r#"{"apps":{}}"#.into()),
            (
                "unknown field",
                valid.replace("\"version\":1", "\"version\":1,\"x\":1"),
            ),
            (
                "hash out of range",
                valid.replace(
                    &format!("\"hash\":{}", hash48(b"1")),
                    "\"hash\":281474976710656",
                ),
            ),
            (
                "unsorted keys",
                valid.replace("\"key\":\"a\"", "\"key\":\"c\""),
            ),
            ("bad app id", valid.replace("\"1\":", "\"x\":")),
            (
                "negative timestamp",
                valid.replace(
                    "\"last_change_timestamp_seconds\":7.5",
                    "\"last_change_timestamp_seconds\":-1.0",
                ),
            ),
        ];
        for (name, text) in cases {
            assert_ne!(
                text, valid,
                "{name}: the case must differ from the valid file"
            );
            let path = dir.path().join(name);
            std::fs::write(&path, &text).expect("written");
            let err = read_state_file(&path).expect_err(name);
            if name == "foreign version" {
                assert!(
                    matches!(err, StateFileError::Version { found: 2, .. }),
                    "{err}"
                );
            }
        }
        let missing = read_state_file(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(missing, StateFileError::Io { .. }));
        let unreadable = read_state_file(dir.path()).expect_err("a directory");
        assert!(matches!(unreadable, StateFileError::Io { .. }));
        std::fs::write(dir.path().join("ok"), &valid).expect("written");
        assert!(read_state_file(&dir.path().join("ok")).is_ok());
    }

    #[test]
    fn a_hand_made_entry_becomes_a_sorted_snapshot() {
        let mut group = sample().apps[&1]["g"].clone();
        group.attributes.reverse();
        group.attributes.push(group.attributes[0].clone());
        let (snapshot, last_change) = group.into_snapshot();
        let keys: Vec<&str> = snapshot.attrs.iter().map(|a| &*a.key).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(last_change, 7.5);
        assert_eq!(
            PersistedGroup::of(&snapshot, last_change),
            sample().apps[&1]["g"]
        );
    }

    proptest! {
        #[test]
        fn parsing_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_state(&bytes);
        }

        #[test]
        fn parsing_mangled_state_never_panics(cut in 0usize..400, byte in any::<u8>(), at in 0usize..400) {
            let mut p = sample();
            let mut h = p.apps[&1]["g"].clone();
            h.attributes.truncate(1);
            p.apps.entry(2).or_default().insert("h".to_string(), h);
            let mut bytes = serde_json::to_vec(&p).expect("serialisable");
            if at < bytes.len() { bytes[at] = byte; }
            bytes.truncate(cut);
            let _ = parse_state(&bytes);
        }
    }
}
