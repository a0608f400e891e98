//! Prints a UserSig for the benchmark's blackbox_exporter module, which has no way to sign one:
//! `cargo run --release --example usersig -- SDKAPPID IDENTIFIER [TTL_SECONDS]`, with the key in
//! the environment variable `TIMATTR_BENCH_SECRET_KEY` (never on the command line, where `ps`
//! shows it). The UserSig goes to stdout only, for the script that builds the probe URL.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use timattr_exporter::secret::SecretKey;
use timattr_exporter::usersig;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(sdkappid), Some(identifier)) = (
        args.first().and_then(|s| s.parse::<u64>().ok()),
        args.get(1),
    ) else {
        eprintln!(
            "usage: usersig SDKAPPID IDENTIFIER [TTL_SECONDS] (key in TIMATTR_BENCH_SECRET_KEY)"
        );
        return ExitCode::from(64);
    };
    let ttl = args
        .get(2)
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(86_400);
    let Ok(key) = std::env::var("TIMATTR_BENCH_SECRET_KEY") else {
        eprintln!("TIMATTR_BENCH_SECRET_KEY is not set");
        return ExitCode::from(64);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sig = usersig::generate(
        &SecretKey::new(key.trim().to_owned()),
        sdkappid,
        identifier,
        now,
        ttl,
    );
    println!("{}", sig.expose());
    ExitCode::SUCCESS
}
