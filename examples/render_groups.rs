//! Renders the per-group families of a W5-like store (N groups of one app, four 16-byte
//! attributes each, timestamps with fractions as the poll loop records them) R times, for
//! instruction counts of the render that do not depend on the machine's load:
//! `valgrind --tool=callgrind target/release/examples/render_groups N R` twice, R = 1 and 2; the
//! difference is one render. `render_groups N 1 FILE` writes the text to FILE, to compare the
//! bytes of two builds; `render_groups N R gzip` times R renders, then R compressions of the
//! text as `/metrics` compresses it (flate2 at `http::GZIP_LEVEL`), one after the other.

use std::io::Write as _;
use std::time::Instant;

use flate2::write::GzEncoder;

use timattr_exporter::metrics::{BuildInfo, GROUP_FAMILIES, Metrics, ValueHashes};
use timattr_exporter::outcome::Outcome;
use timattr_exporter::pattern::Patterns;
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
    // Polls land in no particular order, between the allocations of other polls' requests and
    // answers: the groups' state ends up strewn over the heap, as in the exporter, rather than
    // laid out in render order (which made the render twice as fast as in the server).
    let mut strewn = std::collections::VecDeque::new();
    let mut random = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    for round in 0..2 {
        let step = 7_919 % n.max(1);
        for k in 0..n {
            let i = (k * step.max(1) + round) % n;
            let id = &ids[i];
            let at = 1_765_083_012.0 + i as f64 * 0.000_5;
            // Half the groups changed once: their last change is a timestamp too.
            let attrs = if round == 1 && i % 2 == 0 {
                &second
            } else {
                &first
            };
            store.apply(
                APP,
                id,
                &Outcome::Ok(attrs.clone()),
                at + round as f64 * 5.123_456,
            );
            strewn.push_back(vec![0u8; 16 + (next() % 2048) as usize]);
            if strewn.len() > 4096 {
                strewn.pop_front();
            }
        }
    }
    drop(strewn);
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
    match args.get(2).map(String::as_str) {
        Some("gzip") => return gzip(&metrics, &store, renders),
        Some("families") => return families(&metrics, &store, renders),
        _ => {}
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

fn gzip(metrics: &Metrics, store: &Store, renders: usize) {
    let mut text = Vec::new();
    let started = Instant::now();
    for _ in 0..renders {
        text.clear();
        metrics
            .render_groups(store, ValueHashes::PerKey, None, &mut text)
            .expect("a Vec");
    }
    let rendered = started.elapsed() / renders as u32;
    let started = Instant::now();
    let mut compressed = 0;
    for _ in 0..renders {
        let mut encoder = GzEncoder::new(Counting(0), timattr_exporter::http::GZIP_LEVEL);
        for piece in text.chunks(256 * 1024) {
            encoder.write_all(piece).expect("a counting sink");
        }
        compressed = encoder.finish().expect("a counting sink").0;
    }
    let gzipped = started.elapsed() / renders as u32;
    println!(
        "render into a Vec {rendered:?}, gzip {gzipped:?}: {} bytes, {compressed} gzipped",
        text.len()
    );
}

/// Times each family alone (every other one excluded).
fn families(metrics: &Metrics, store: &Store, renders: usize) {
    let names = GROUP_FAMILIES.map(|(name, _, _)| name);
    let mut text = Vec::new();
    for name in names {
        let others = Patterns::new(names.into_iter().filter(|&n| n != name)).expect("valid");
        let started = Instant::now();
        for _ in 0..renders {
            text.clear();
            metrics
                .render_groups(store, ValueHashes::PerKey, Some(&others), &mut text)
                .expect("a Vec");
        }
        let took = started.elapsed() / renders as u32;
        println!("{name}: {took:?}, {} bytes", text.len());
    }
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
