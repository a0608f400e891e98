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

impl StateFileError {
    /// No file at the path: a first start, not a fault.
    pub fn is_missing(&self) -> bool {
        matches!(self, StateFileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
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

/// Writes a whole [`Persisted`] atomically, as [`StateFileWriter`] does (the daemon streams the
/// store's groups into a [`StateFileWriter`] instead, so it never holds a copy of them all).
pub fn write_state_file(path: &Path, persisted: &Persisted) -> std::io::Result<()> {
    let mut file = StateFileWriter::create(path)?;
    for (&sdkappid, groups) in &persisted.apps {
        for (group_id, group) in groups {
            file.entry(sdkappid, group_id, group);
        }
        file.flush()?;
    }
    file.commit()
}

/// Where [`Store::persist_into`](crate::store::Store::persist_into) puts what the state file
/// holds: the groups of one app come together, chunk by chunk.
pub(crate) trait StateSink {
    /// One group's entry. Called with an app's lock held, so it does no I/O.
    fn group(&mut self, sdkappid: u64, group_id: &str, snapshot: &Snapshot, last_change: f64);
    /// After each chunk of groups, with no lock held.
    fn end_of_chunk(&mut self) -> std::io::Result<()>;
}

impl StateSink for Persisted {
    fn group(&mut self, sdkappid: u64, group_id: &str, snapshot: &Snapshot, last_change: f64) {
        self.apps.entry(sdkappid).or_default().insert(
            group_id.to_owned(),
            PersistedGroup::of(snapshot, last_change),
        );
    }

    fn end_of_chunk(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A state file being written atomically: a temporary file in the same directory, filled chunk
/// by chunk, fsynced, renamed over the path, then the directory fsynced so the rename survives a
/// crash. A reader sees the old file or the new one, never a mix; the temporary file never
/// outlives a failed or abandoned write (dropped before [`commit`](Self::commit)).
///
/// The JSON is the one `serde_json` makes of a [`Persisted`], byte for byte when groups come in
/// order, but it is built one group at a time into a buffer of one chunk that
/// [`flush`](Self::flush) appends to the file: serialising 250,000 groups into one 74 MB buffer,
/// from a full copy of them, stalled polling for a quarter of a second (BENCHMARKS, "Scale").
pub struct StateFileWriter {
    path: PathBuf,
    dir: PathBuf,
    tmp: PathBuf,
    /// `None` once committed: nothing left to clean up.
    file: Option<std::fs::File>,
    /// Encoded groups not yet appended to the file.
    buf: Vec<u8>,
    /// The app whose object is open in the JSON.
    app: Option<u64>,
}

impl StateFileWriter {
    /// Creates the temporary file and starts the JSON.
    pub fn create(path: &Path) -> std::io::Result<StateFileWriter> {
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
        let file = std::fs::File::create(&tmp)?;
        let mut buf = Vec::with_capacity(256 * 1024);
        buf.extend_from_slice(format!("{{\"version\":{STATE_FILE_VERSION},\"apps\":{{").as_bytes());
        Ok(StateFileWriter {
            path: path.to_owned(),
            dir,
            tmp,
            file: Some(file),
            buf,
            app: None,
        })
    }

    /// Encodes one group's entry into the buffer (no I/O). The groups of one app must come
    /// together; an app never comes back after another one.
    fn entry(&mut self, sdkappid: u64, group_id: &str, group: &impl Serialize) {
        match self.app {
            Some(open) if open == sdkappid => self.buf.push(b','),
            open => {
                if open.is_some() {
                    self.buf.extend_from_slice(b"},");
                }
                // A map's integer key is a JSON string, as `serde_json` writes `Persisted.apps`.
                self.buf
                    .extend_from_slice(format!("\"{sdkappid}\":{{").as_bytes());
                self.app = Some(sdkappid);
            }
        }
        serde_json::to_writer(&mut self.buf, group_id).expect("a string encodes into memory");
        self.buf.push(b':');
        serde_json::to_writer(&mut self.buf, group).expect("an entry encodes into memory");
    }

    /// Appends what was encoded to the temporary file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Ends the JSON, fsyncs the temporary file and renames it over the path.
    pub fn commit(mut self) -> std::io::Result<()> {
        if self.app.is_some() {
            self.buf.push(b'}');
        }
        self.buf.extend_from_slice(b"}}");
        self.flush()?;
        let file = self
            .file
            .take()
            .expect("a writer is committed once, by value");
        let written = (|| {
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        // Opening a directory to fsync it works on Unix; elsewhere the rename is the best there
        // is.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        if let Some(name) = self.path.file_name() {
            remove_dead_writers_temp_files(&self.dir, name);
        }
        Ok(())
    }
}

impl StateSink for StateFileWriter {
    fn group(&mut self, sdkappid: u64, group_id: &str, snapshot: &Snapshot, last_change: f64) {
        self.entry(
            sdkappid,
            group_id,
            &GroupEntry {
                attributes: AttributeEntries(&snapshot.attrs),
                set_hash: snapshot.set_hash,
                last_change_timestamp_seconds: last_change,
            },
        );
    }

    fn end_of_chunk(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

impl Drop for StateFileWriter {
    /// A write that failed or was given up leaves the old file and no temporary one.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// [`PersistedGroup`] as it encodes, borrowed from a snapshot instead of copied.
#[derive(Serialize)]
struct GroupEntry<'a> {
    attributes: AttributeEntries<'a>,
    set_hash: u64,
    last_change_timestamp_seconds: f64,
}

struct AttributeEntries<'a>(&'a [Attr]);

impl Serialize for AttributeEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|a| AttributeEntry {
            key: &a.key,
            hash: a.hash,
            bytes: a.len,
        }))
    }
}

/// [`PersistedAttribute`] as it encodes.
#[derive(Serialize)]
struct AttributeEntry<'a> {
    key: &'a str,
    hash: u64,
    bytes: u32,
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

    #[test]
    fn only_an_absent_file_counts_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let absent = read_state_file(&dir.path().join("state.json")).unwrap_err();
        assert!(absent.is_missing(), "{absent}");
        let a_directory = read_state_file(dir.path()).unwrap_err();
        assert!(!a_directory.is_missing(), "{a_directory}");
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        let corrupt = read_state_file(&dir.path().join("bad.json")).unwrap_err();
        assert!(!corrupt.is_missing(), "{corrupt}");
    }

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

    /// Three apps, one with a group ID and keys that need escaping, one with a group with no
    /// attributes.
    fn several_apps() -> Persisted {
        let mut p = sample();
        let g = p.apps[&1]["g"].clone();
        for i in 0..40 {
            p.apps
                .entry(1)
                .or_default()
                .insert(format!("@TGS#{i:03}"), g.clone());
        }
        let mut odd = g.clone();
        odd.attributes[0].key = "\" back\\ nl\n é".to_string(); // sorts before "b"
        odd.last_change_timestamp_seconds = 0.0;
        p.apps
            .entry(7)
            .or_default()
            .insert("\"id\"\u{1}".to_string(), odd);
        let empty = PersistedGroup {
            attributes: Vec::new(),
            set_hash: set_hash(&[]),
            last_change_timestamp_seconds: 1e10,
        };
        p.apps
            .entry(u64::MAX)
            .or_default()
            .insert("e".to_string(), empty);
        p
    }

    #[test]
    fn a_streamed_state_file_is_what_serde_json_makes_of_persisted() {
        // Old files were `serde_json::to_vec(&Persisted)`; the streamed one is the same bytes,
        // so either reader reads either.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        for persisted in [Persisted::default(), sample(), several_apps()] {
            write_state_file(&path, &persisted).expect("written");
            let bytes = std::fs::read(&path).expect("readable");
            let whole = serde_json::to_vec(&persisted).expect("serialisable");
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&whole)
            );
            assert_eq!(read_state_file(&path).expect("valid"), persisted);
        }
        // The snapshot path encodes as `PersistedGroup` does.
        let mut file = StateFileWriter::create(&path).expect("created");
        for (&sdkappid, groups) in &several_apps().apps {
            for (id, g) in groups {
                let (snapshot, last_change) = g.clone().into_snapshot();
                file.group(sdkappid, id, &snapshot, last_change);
            }
            file.end_of_chunk().expect("appended");
        }
        file.commit().expect("committed");
        let whole = serde_json::to_vec(&several_apps()).expect("serialisable");
        assert_eq!(std::fs::read(&path).expect("readable"), whole);
    }

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("listable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_write_given_up_midway_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        write_state_file(&path, &sample()).expect("written");
        let old = std::fs::read(&path).expect("readable");
        {
            // Chunks already appended, then an error in the walk: the writer is dropped.
            let mut file = StateFileWriter::create(&path).expect("created");
            for (&sdkappid, groups) in &several_apps().apps {
                for (id, g) in groups {
                    file.entry(sdkappid, id, g);
                }
                file.flush().expect("appended");
            }
            assert_eq!(
                names(dir.path()).len(),
                2,
                "the temporary file is being written"
            );
        }
        assert_eq!(names(dir.path()), ["state.json"]);
        assert_eq!(std::fs::read(&path).expect("readable"), old);
    }

    #[cfg(unix)]
    #[test]
    fn a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file() {
        // A handle that refuses writes stands in for a full disk.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        write_state_file(&path, &sample()).expect("written");
        let old = std::fs::read(&path).expect("readable");
        let mut file = StateFileWriter::create(&path).expect("created");
        file.file = Some(std::fs::File::open("/dev/null").expect("openable read-only"));
        file.entry(1, "g", &sample().apps[&1]["g"]);
        assert!(file.flush().is_err(), "a read-only handle refuses writes");
        drop(file);
        assert_eq!(names(dir.path()), ["state.json"]);
        assert_eq!(std::fs::read(&path).expect("readable"), old);
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
