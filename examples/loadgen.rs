//! A fixed-rate HTTP load generator for the benchmark (scripts/bench_e2e.py): drives
//! blackbox_exporter's `/probe` at the same request rate the exporter polls at, so both sides
//! are compared per upstream request.
//!
//! `cargo run --release --example loadgen -- URL RATE SECONDS [MAX_IN_FLIGHT]`
//!
//! Sends `GET URL` RATE times a second for SECONDS (keep-alive connections, at most
//! MAX_IN_FLIGHT at once, default 64; a tick that finds all busy is counted as skipped, not
//! queued). Prints one JSON line: `{"sent","ok","probe_failed","errors","skipped","seconds"}`,
//! where `ok` counts answers whose body has `probe_success 1`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    probe_failed: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(rate), Some(seconds)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<f64>().ok()),
        args.get(2).and_then(|s| s.parse::<f64>().ok()),
    ) else {
        eprintln!("usage: loadgen URL RATE SECONDS [MAX_IN_FLIGHT]");
        return ExitCode::from(64);
    };
    let max_in_flight = args
        .get(3)
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(64);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(max_in_flight)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build the HTTP client: {e}");
            return ExitCode::from(1);
        }
    };
    let tally = Arc::new(Tally::default());
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let total = (rate * seconds).round() as u64;
    let spacing = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut tick = tokio::time::interval(spacing);
    // Catch up after a late wake-up, so the average rate is the one asked for.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        tick.tick().await;
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tally.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let (client, tally, url) = (client.clone(), Arc::clone(&tally), url.clone());
        tasks.spawn(async move {
            match client.get(&url).send().await {
                Ok(resp) => match resp.text().await {
                    Ok(body) if body.contains("probe_success 1") => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        tally.probe_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(_) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    println!(
        "{{\"sent\":{},\"ok\":{},\"probe_failed\":{},\"errors\":{},\"skipped\":{},\"seconds\":{:.3}}}",
        tally.sent.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
        tally.probe_failed.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.skipped.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
