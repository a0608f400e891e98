//! Criterion micro-benchmarks of the exporter's hot paths (issue 5, workload 6): UserSig
//! generation (cached by the client, so rare), parsing a `get_group_attr` answer, applying a
//! poll to the store (snapshot, hashes and diff), and rendering `/metrics` per series.
//!
//! `cargo bench --bench hot_paths`; the end-to-end workloads are in `scripts/bench.sh`.
//! Figures and how to read them: BENCHMARKS.md.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use timattr_exporter::client::parse_group_attr;
use timattr_exporter::metrics::{BuildInfo, Metrics, ValueHashes};
use timattr_exporter::outcome::{Attributes, Outcome};
use timattr_exporter::secret::SecretKey;
use timattr_exporter::store::{Seeds, Store};
use timattr_exporter::usersig;

const APP: u64 = 1_400_000_001;

/// Four attributes with 16-byte values, as `config/scenarios/bench.yml` generates them.
fn attrs(round: u32) -> Vec<(String, String)> {
    (0..4)
        .map(|k| (format!("key{k}"), format!("value-{k}-{round:09}")))
        .collect()
}

fn answer_body() -> Vec<u8> {
    let ary: Vec<serde_json::Value> = attrs(0)
        .into_iter()
        .map(|(k, v)| serde_json::json!({ "key": k, "value": v }))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "ActionStatus": "OK",
        "ErrorInfo": "",
        "ErrorCode": 0,
        "GroupAttrAry": ary,
    }))
    .expect("a JSON value serializes")
}

/// A store of `n` groups, each polled once successfully with four attributes.
fn store_with(n: usize) -> Store {
    let store = Store::new();
    let ids: Vec<String> = (0..n).map(|i| format!("@TGS#bench{i}")).collect();
    store.set_assigned(APP, &ids, Seeds::DropUnlisted);
    let a = attrs(0);
    for id in &ids {
        store.apply(APP, id, &ok(&a), 1_700_000_000.0);
    }
    store
}

fn usersig_generate(c: &mut Criterion) {
    let key = SecretKey::new("bench-secret-key-0123456789abcdef".to_owned());
    c.bench_function("usersig_generate", |b| {
        b.iter(|| usersig::generate(&key, APP, black_box("administrator"), 1_700_000_000, 86_400))
    });
}

fn parse(c: &mut Criterion) {
    let body = answer_body();
    let mut g = c.benchmark_group("parse_group_attr");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("4_attrs", |b| b.iter(|| parse_group_attr(black_box(&body))));
    g.finish();
}

fn apply(c: &mut Criterion) {
    let store = store_with(10_000);
    let same = attrs(0);
    let changed = attrs(1);
    let mut g = c.benchmark_group("store_apply_10k_groups");
    // The common case: nothing changed (snapshot, hashes, compare).
    g.bench_function("unchanged", |b| {
        b.iter(|| {
            store.apply(
                APP,
                black_box("@TGS#bench4242"),
                &ok(&same),
                1_700_000_001.0,
            )
        })
    });
    // Every poll modifies all four values: the diff and its report.
    let mut round = 0u32;
    g.bench_function("4_modified", |b| {
        b.iter(|| {
            round ^= 1;
            let attrs = if round == 1 { &changed } else { &same };
            store.apply(
                APP,
                black_box("@TGS#bench4243"),
                &ok(attrs),
                1_700_000_001.0,
            )
        })
    });
    g.finish();
}

fn render(c: &mut Criterion) {
    let mut g = c.benchmark_group("render");
    g.sample_size(20);
    let metrics = Metrics::new(BuildInfo {
        version: "bench",
        revision: String::new(),
        rustc: String::new(),
    });
    for n in [1_000usize, 10_000] {
        let store = store_with(n);
        // Per group with value_hashes per_key: up, error_code, attributes, bytes, set hash,
        // 4 value hashes, 3 change counters, last change, last success = 14 series.
        g.throughput(Throughput::Elements(n as u64 * 14));
        g.bench_function(format!("store_{n}_groups_per_key"), |b| {
            b.iter_batched_ref(
                || Vec::with_capacity(n * 2048),
                |out| {
                    metrics
                        .render_groups(&store, ValueHashes::PerKey, None, out)
                        .expect("writing to a Vec")
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, usersig_generate, parse, apply, render);
criterion_main!(benches);

fn ok(attrs: &[(String, String)]) -> Outcome<Attributes> {
    Outcome::Ok(attrs.to_vec())
}
