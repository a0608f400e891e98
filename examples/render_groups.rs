//! Renders the per-group families of a W5-like store (N groups of one app, four 16-byte
//! attributes each, timestamps with fractions as the poll loop records them) R times, for
//! instruction counts of the render that do not depend on the machine's load:
//! `valgrind --tool=callgrind target/release/examples/render_groups N R` twice, R = 1 and 2; the
//! difference is one render. `render_groups N 1 FILE` writes the text to FILE, to compare the
//! bytes of two builds.

use std::io::Write as _;

use timattr_exporter::metrics::{BuildInfo, Metrics, ValueHashes};
use timattr_exporter::outcome::Outcome;
use timattr_exporter::store::{Seeds, Store};

const APP: u64 = 1_400_000_001;

fn attrs(round: usize) -> Vec<(String, String)> {
    (0..4)
        .map(|k| (format!("key{k}"), format!("value-{k}-{round:09}")))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg =
        |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().expect("a count"));
    let (n, renders) = (arg(0, 100_000), arg(1, 1));
    let store = Store::new();
    let ids: Vec<String> = (0..n).map(|i| format!("@TGS#bench{i}")).collect();
    store.set_assigned(APP, &ids, Seeds::DropUnlisted);
    let (first, second) = (attrs(0), attrs(1));
    for (i, id) in ids.iter().enumerate() {
        let at = 1_765_083_012.0 + i as f64 * 0.000_5;
        store.apply(APP, id, &Outcome::Ok(first.clone()), at);
        // Half the groups changed once: their last change is a timestamp too.
        let again = if i % 2 == 0 { &second } else { &first };
        store.apply(APP, id, &Outcome::Ok(again.clone()), at + 5.123_456);
    }
    let metrics = Metrics::new(BuildInfo {
        version: "bench",
        revision: String::new(),
        rustc: String::new(),
    });
    let mut bytes = 0;
    for _ in 0..renders {
        let mut sink = Counting(0);
        metrics
            .render_groups(&store, ValueHashes::PerKey, None, &mut sink)
            .expect("a counting sink");
        bytes = sink.0;
    }
    if let Some(path) = args.get(2) {
        let mut text = Vec::with_capacity(bytes);
        metrics
            .render_groups(&store, ValueHashes::PerKey, None, &mut text)
            .expect("a Vec");
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(&text))
            .expect("writing the text");
    }
    println!("{n} groups, {renders} renders of {bytes} bytes");
}

/// Counts what it is given, as the server's chunked writer would take it, without keeping it.
struct Counting(usize);

impl std::io::Write for Counting {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0 += data.len();
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
