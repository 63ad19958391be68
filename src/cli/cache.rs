//! `ferry cache ls | prune --keep-last N | gc`: the bundle cache's records of
//! bundle runs, and removing what no kept record uses (refused while a bundle runs).

use super::out::outln;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{GlobalArgs, human_bytes};
use crate::bundle::cache;

/// Flags of `ferry cache`.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// The bundle cache (default $XDG_CACHE_HOME/ferry or ~/.cache/ferry, as `ferry bundle`).
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CacheCommand {
    /// List the bundle runs recorded in the cache (newest last), and its blob count and bytes.
    Ls,
    /// Drop all but the N newest records (their blobs go at the next gc).
    Prune {
        /// How many of the newest records to keep.
        #[arg(long, value_name = "N")]
        keep_last: usize,
    },
    /// Remove every blob that no kept record's images reference (refused while a bundle runs).
    Gc,
}

/// Runs `ferry cache`.
pub fn run(g: &GlobalArgs, a: CacheArgs) -> anyhow::Result<ExitCode> {
    let dir = match a.cache {
        Some(c) => c,
        None => super::bundle::default_cache()?,
    };
    match a.command {
        CacheCommand::Ls => {
            let records = cache::records(&dir)?;
            let (blobs, bytes) = cache::usage(&dir)?;
            if a.json {
                let runs: Vec<_> = records.iter().map(|(_, r)| r).collect();
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "cache": dir, "blobs": blobs, "bytes": bytes, "runs": runs,
                    }))?
                );
            } else {
                for (_, r) in &records {
                    outln!(
                        "{}  {} images  {}",
                        utc(r.created),
                        r.images.len(),
                        r.output
                    );
                }
                outln!(
                    "{}: {} run(s) recorded, {blobs} blobs, {}",
                    dir.display(),
                    records.len(),
                    human_bytes(bytes)
                );
            }
        }
        CacheCommand::Prune { keep_last } => {
            let lock = cache::lock_exclusive(&dir)?;
            let dropped = cache::prune(&dir, keep_last, &lock)?;
            if a.json {
                outln!(
                    "{}",
                    serde_json::json!({ "dropped": dropped, "kept": cache::records(&dir)?.len() })
                );
            } else if !g.quiet {
                eprintln!(
                    "ferry: dropped {dropped} record(s) of {}; `ferry cache gc` removes what they alone used",
                    dir.display()
                );
            }
        }
        CacheCommand::Gc => {
            let lock = cache::lock_exclusive(&dir)?;
            let r = cache::gc(&dir, &lock)?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else if !g.quiet {
                eprintln!(
                    "ferry: removed {} blobs ({}) and {} links from {}; {} blobs kept",
                    r.blobs_removed,
                    human_bytes(r.bytes_removed),
                    r.links_removed,
                    dir.display(),
                    r.blobs_kept
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(1_796_000_000), "2026-11-30T00:53:20Z");
    }
}
