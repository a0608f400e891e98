//! The state file (SPEC "State") with the real binary: SIGTERM writes it; a change made while
//! the exporter was down is counted exactly once after it comes back; `kill -9` at any moment
//! never leaves a file that loses the previous state; a corrupt, truncated, foreign-version or
//! unreadable file is logged and ignored.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;
use timattr_exporter::state_file::{
    Persisted, PersistedAttribute, PersistedGroup, STATE_FILE_VERSION, read_state_file,
    write_state_file,
};

const WAIT: Duration = Duration::from_secs(20);
const G: &str = "@TGS#persist";

fn changes(text: &str, group: &str, change: &str) -> Option<f64> {
    value(
        text,
        "timattr_group_attribute_changes_total",
        &[("group_id", group), ("change", change)],
    )
}

/// Waits until the fake has seen at least `n` requests for the group and the exporter shows it
/// up.
async fn polled_beyond(server: &timattr_exporter::fake::FakeServer, exporter: &Exporter, n: u64) {
    let url = exporter.url("/metrics");
    eventually(WAIT, || async {
        let t = scrape(&url).await;
        (server.fake.counts().group(APP, G) >= n
            && value(&t, "timattr_group_up", &[("group_id", G)]) == Some(1.0))
        .then_some(())
    })
    .await
    .expect("the group is polled");
}

fn state_path(cfg: &ConfigDir) -> PathBuf {
    cfg.dir.path().join("state.json")
}

fn group_in(persisted: &Persisted, group: &str) -> Option<PersistedGroup> {
    persisted.apps.get(&APP)?.get(group).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_down_is_counted_once_after_restart() {
    let server = fake_with_app().await;
    group(&server, G, &[("a", "1"), ("b", "2")]);
    let cfg = ConfigDir::new(server.base_url().as_str(), &[G], "state_file: state.json\n");
    let state = state_path(&cfg);

    // First run: baseline only, no change counted; the file appears at SIGTERM (the periodic
    // write is every 30 s, so it cannot be the one that wrote it).
    let mut exporter = Exporter::start(&cfg.path(), &[]);
    polled_beyond(&server, &exporter, 1).await;
    let t = scrape(&exporter.url("/metrics")).await;
    assert_eq!(changes(&t, G, "modified"), Some(0.0));
    assert!(
        !state.exists(),
        "no state file before the first periodic write"
    );
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(WAIT), Some(0), "{}", exporter.logs());
    let persisted = read_state_file(&state).expect("SIGTERM wrote a valid state file");
    let saved = group_in(&persisted, G).expect("the group is in the state file");
    let keys: Vec<&str> = saved.attributes.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert!(
        !std::fs::read_to_string(&state).unwrap().contains("\"1\""),
        "the state file holds hashes, not values"
    );

    // While it is down: a modified, b removed, c added.
    server
        .fake
        .set_attrs(APP, G, &[("a", "changed"), ("c", "3")])
        .unwrap();
    let before_restart = server.fake.counts().group(APP, G);
    let mut exporter = Exporter::start(&cfg.path(), &[]);
    assert!(
        exporter.wait_for_log("state file loaded", WAIT).is_some(),
        "{}",
        exporter.logs()
    );
    let url = exporter.url("/metrics");
    eventually(WAIT, || async {
        let t = scrape(&url).await;
        (changes(&t, G, "modified") == Some(1.0)).then_some(())
    })
    .await
    .expect("the change made while down is counted");
    // Several more polls: still exactly once.
    polled_beyond(&server, &exporter, before_restart + 4).await;
    let t = scrape(&url).await;
    for change in ["added", "removed", "modified"] {
        assert_eq!(changes(&t, G, change), Some(1.0), "{change}: {t}");
    }
    let last_change = value(
        &t,
        "timattr_group_last_change_timestamp_seconds",
        &[("group_id", G)],
    )
    .expect("last change timestamp");
    assert!(last_change > 0.0);
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(WAIT), Some(0));

    // Third run, nothing changed while down: nothing counted, and the last change timestamp
    // survives the restart.
    let before_restart = server.fake.counts().group(APP, G);
    let mut exporter = Exporter::start(&cfg.path(), &[]);
    polled_beyond(&server, &exporter, before_restart + 3).await;
    let t = scrape(&exporter.url("/metrics")).await;
    for change in ["added", "removed", "modified"] {
        assert_eq!(changes(&t, G, change), Some(0.0), "{change}: {t}");
    }
    assert_eq!(
        value(
            &t,
            "timattr_group_last_change_timestamp_seconds",
            &[("group_id", G)]
        ),
        Some(last_change)
    );
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_around_shutdown_writes_leaves_the_old_or_the_new_state() {
    let server = fake_with_app().await;
    group(&server, G, &[("round", "0")]);
    let cfg = ConfigDir::new(server.base_url().as_str(), &[G], "state_file: state.json\n");
    let state = state_path(&cfg);
    let hash = |value: &str| {
        timattr_exporter::snapshot::set_hash(&[("round".to_owned(), value.to_owned())])
    };
    let mut rng = rand::thread_rng();
    // What the file held before this round (None: no file yet).
    let mut previous: Option<u64> = None;
    let mut outcomes = BTreeMap::<&str, u32>::new();
    for round in 1..=8u32 {
        let value = round.to_string();
        server
            .fake
            .set_attrs(APP, G, &[("round", value.as_str())])
            .unwrap();
        let new = hash(&value);
        let mut exporter = Exporter::start(&cfg.path(), &[]);
        let n = server.fake.counts().group(APP, G);
        polled_beyond(&server, &exporter, n + 1).await;
        // Every fourth round ends cleanly (the new state must be there), every fourth is killed
        // without a shutdown (the old one must be), and the rest are killed 0-8 ms into the
        // shutdown write: before, during or after it.
        let expected: &[Option<u64>] = match round % 4 {
            0 => {
                exporter.signal("TERM");
                assert_eq!(exporter.wait_exit(WAIT), Some(0), "round {round}");
                &[Some(new)]
            }
            1 => {
                exporter.signal("KILL");
                &[previous]
            }
            _ => {
                exporter.signal("TERM");
                std::thread::sleep(Duration::from_micros(rng.gen_range(0..8_000)));
                exporter.signal("KILL");
                &[previous, Some(new)]
            }
        };
        drop(exporter);
        let got = match std::fs::metadata(&state) {
            Err(_) => None,
            Ok(_) => {
                let persisted = read_state_file(&state)
                    .unwrap_or_else(|e| panic!("round {round}: state file not valid: {e}"));
                Some(group_in(&persisted, G).expect("the group is kept").set_hash)
            }
        };
        assert!(
            expected.contains(&got),
            "round {round}: the file holds {got:?}, neither the old state {previous:?} nor the new {new}"
        );
        let label = match got {
            None => "no file yet",
            Some(h) if h == new => "new state",
            Some(_) => "old state",
        };
        *outcomes.entry(label).or_default() += 1;
        previous = got;
    }
    // Both ends were reached: rounds 4 and 8 wrote the new state, rounds 5 kept an old one.
    assert!(
        outcomes.get("new state").copied().unwrap_or(0) >= 2,
        "{outcomes:?}"
    );
    assert!(
        outcomes.get("old state").copied().unwrap_or(0) >= 1,
        "{outcomes:?}"
    );
}

/// The writer side of [`sigkill_during_back_to_back_writes_never_tears_the_file`]: run in a
/// child process (this test binary again), it writes the state file in a loop until killed.
#[test]
#[ignore = "a helper run by sigkill_during_back_to_back_writes_never_tears_the_file"]
fn state_writer_child() {
    let Some(path) = std::env::var_os("TIMATTR_STATE_WRITER_PATH") else {
        return;
    };
    let path = PathBuf::from(path);
    let mut i = read_state_file(&path).map_or(0, |p| generation_of(&p) + 1);
    loop {
        write_state_file(&path, &numbered_state(i)).expect("the state file is written");
        i += 1;
    }
}

/// A state whose every part depends on `i`, with a size that varies, so a torn or mixed file
/// cannot pass for a valid one.
fn numbered_state(i: u64) -> Persisted {
    let groups = (0..(20 + i % 180))
        .map(|g| {
            let attributes = (0..(1 + (i + g) % 16))
                .map(|k| PersistedAttribute {
                    key: format!("key{k:02}"),
                    hash: (i * 31 + g * 7 + k) % (1 << 48),
                    bytes: ((i + k) % 4000) as u32,
                })
                .collect();
            let group = PersistedGroup {
                attributes,
                set_hash: if g == 0 { i } else { (i ^ g) % (1 << 48) },
                last_change_timestamp_seconds: i as f64,
            };
            (format!("@TGS#writer{g:03}"), group)
        })
        .collect();
    Persisted {
        version: STATE_FILE_VERSION,
        apps: BTreeMap::from([(APP, groups)]),
    }
}

fn generation_of(p: &Persisted) -> u64 {
    p.apps[&APP]["@TGS#writer000"].set_hash
}

fn temp_leftovers(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .count()
}

#[test]
fn sigkill_during_back_to_back_writes_never_tears_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut rng = rand::thread_rng();
    let mut last: Option<u64> = None;
    let mut advanced = 0;
    let started = Instant::now();
    let rounds = 40;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "state_writer_child",
                "--ignored",
                "--test-threads=1",
                "--quiet",
            ])
            .env("TIMATTR_STATE_WRITER_PATH", &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the writer child starts");
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..120)));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        match read_state_file(&path) {
            Ok(p) => {
                let i = generation_of(&p);
                assert_eq!(p, numbered_state(i), "round {round}: a mixed state");
                if let Some(prev) = last {
                    assert!(
                        i >= prev,
                        "round {round}: the state went back from {prev} to {i}"
                    );
                    if i > prev {
                        advanced += 1;
                    }
                }
                last = Some(i);
            }
            Err(e) => {
                assert!(
                    last.is_none() && !path.exists(),
                    "round {round}: the previous state was lost: {e}"
                );
            }
        }
    }
    assert!(
        advanced >= rounds / 2,
        "the writer made progress in only {advanced} of {rounds} rounds"
    );
    let leftovers = temp_leftovers(dir.path());
    eprintln!(
        "{rounds} kills in {:?}, {} writes, {advanced} rounds advanced, {leftovers} temporary files left by killed writers",
        started.elapsed(),
        last.unwrap_or(0),
    );
    // The next successful write sweeps the temporary files of writers that are gone.
    write_state_file(&path, &numbered_state(last.unwrap_or(0) + 1)).unwrap();
    assert_eq!(
        temp_leftovers(dir.path()),
        0,
        "dead writers' temporary files are removed"
    );
}

/// Starts the exporter on a state file `prepare` set up, and checks it warns, polls anyway,
/// counts no change (no baseline came from the file), and exits 0 on SIGTERM.
async fn starts_despite(what: &str, prepare: impl FnOnce(&Path)) -> String {
    let server = fake_with_app().await;
    group(&server, G, &[("a", "1")]);
    let cfg = ConfigDir::new(server.base_url().as_str(), &[G], "state_file: state.json\n");
    prepare(&state_path(&cfg));
    let mut exporter = Exporter::start(&cfg.path(), &[]);
    let warning = exporter
        .wait_for_log("state file ignored", WAIT)
        .unwrap_or_else(|| panic!("{what}: no warning: {}", exporter.logs()));
    assert!(warning.contains("level=warn"), "{what}: {warning}");
    polled_beyond(&server, &exporter, 2).await;
    let t = scrape(&exporter.url("/metrics")).await;
    assert_eq!(changes(&t, G, "added"), Some(0.0), "{what}");
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(WAIT), Some(0), "{what}");
    warning
}

/// Puts a bad state file (or something else) where the state file goes.
type Prepare = Box<dyn FnOnce(&Path)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_foreign_or_unreadable_state_files_are_ignored() {
    let valid = {
        let mut p = Persisted::default();
        p.apps.entry(APP).or_default().insert(
            G.to_owned(),
            PersistedGroup {
                attributes: vec![PersistedAttribute {
                    key: "old".into(),
                    hash: 1,
                    bytes: 1,
                }],
                set_hash: 2,
                last_change_timestamp_seconds: 0.0,
            },
        );
        serde_json::to_vec(&p).unwrap()
    };
    let cases: Vec<(&str, Prepare, &str)> = vec![
        (
            "corrupt",
            Box::new(|p: &Path| std::fs::write(p, b"{\"version\":1,\"apps\":{{{{").unwrap()),
            "not valid",
        ),
        (
            "binary garbage",
            Box::new(|p: &Path| std::fs::write(p, [0xff, 0xfe, 0x00, 0x80, 0x7b]).unwrap()),
            "not valid",
        ),
        (
            "truncated",
            Box::new({
                let valid = valid.clone();
                move |p: &Path| std::fs::write(p, &valid[..valid.len() / 2]).unwrap()
            }),
            "not valid",
        ),
        (
            "empty",
            Box::new(|p: &Path| std::fs::write(p, b"").unwrap()),
            "not valid",
        ),
        (
            "foreign version",
            Box::new({
                let future = String::from_utf8(valid.clone())
                    .unwrap()
                    .replace("\"version\":1", "\"version\":99");
                move |p: &Path| std::fs::write(p, future).unwrap()
            }),
            "version 99",
        ),
        (
            "hash out of range",
            Box::new({
                let bad = String::from_utf8(valid.clone())
                    .unwrap()
                    .replace("\"set_hash\":2", "\"set_hash\":18446744073709551615");
                move |p: &Path| std::fs::write(p, bad).unwrap()
            }),
            "48-bit",
        ),
        // Tests run as root, which reads any file whatever its mode: a directory in the file's
        // place is unreadable for everyone (EISDIR).
        (
            "unreadable (a directory)",
            Box::new(|p: &Path| std::fs::create_dir(p).unwrap()),
            "cannot read",
        ),
    ];
    for (what, prepare, expect) in cases {
        let warning = starts_despite(what, prepare).await;
        assert!(warning.contains(expect), "{what}: {warning}");
        assert!(!warning.contains(KEY));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_state_file_warns_at_shutdown_and_still_exits_0() {
    let server = fake_with_app().await;
    group(&server, G, &[("a", "1")]);
    let cfg = ConfigDir::new(server.base_url().as_str(), &[G], "state_file: state.json\n");
    std::fs::create_dir(state_path(&cfg)).unwrap();
    let mut exporter = Exporter::start(&cfg.path(), &[]);
    polled_beyond(&server, &exporter, 1).await;
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(WAIT), Some(0));
    assert!(
        exporter
            .wait_for_log("cannot write the state file", WAIT)
            .is_some(),
        "{}",
        exporter.logs()
    );
    assert_eq!(
        temp_leftovers(cfg.dir.path()),
        0,
        "a failed write cleans up"
    );
}

/// A state file path that blocks reads (a FIFO nobody writes, as a hung mount would) holds the
/// start no longer than the read's deadline (polling waits for the seeds, which a change made
/// while down needs): the file is ignored with a warning, polling starts, and the shutdown
/// write replaces the FIFO with a real state file. Before, the exporter never polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_that_blocks_reads_is_skipped_at_start() {
    let server = fake_with_app().await;
    group(&server, G, &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_str(), &[G], "state_file: state.json\n");
    let state = state_path(&cfg);
    let made = Command::new("mkfifo")
        .arg(&state)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let mut exporter = Exporter::start(&cfg.path(), &[]);
    polled_beyond(&server, &exporter, 1).await;
    let warned = exporter
        .wait_for_log("state file ignored", WAIT)
        .unwrap_or_else(|| panic!("no warning: {}", exporter.logs()));
    assert!(warned.contains("did not finish in time"), "{warned}");
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(WAIT), Some(0), "{}", exporter.logs());
    let persisted = read_state_file(&state).expect("the shutdown wrote a real state file");
    assert!(group_in(&persisted, G).is_some());
}
