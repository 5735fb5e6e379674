//! Timing and memory measurement helpers: medians over interleaved repetitions, allocator
//! deltas and resident-set deltas.

use std::time::{Duration, Instant};

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Runs `f` once and returns the elapsed time.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// Median of a list of durations.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Min and max of a list of durations, for the spread.
pub fn spread(v: &[Duration]) -> (Duration, Duration) {
    let min = v.iter().copied().min().unwrap_or_default();
    let max = v.iter().copied().max().unwrap_or_default();
    (min, max)
}

/// Bytes the process holds in RAM (resident set), from /proc.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Heap bytes retained by `f` (allocated minus freed while it ran) and resident-set growth.
pub fn retained<T>(f: impl FnOnce() -> T) -> (T, i64, i64) {
    let rss0 = rss_bytes() as i64;
    let region = Region::new(GLOBAL);
    let out = f();
    let stats = region.change();
    // Reallocations are already folded into allocated/deallocated by stats_alloc.
    let heap = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64;
    (out, heap, rss_bytes() as i64 - rss0)
}

/// Formats a rate with thousands separators.
pub fn rate(count: usize, d: Duration) -> f64 {
    count as f64 / d.as_secs_f64()
}

pub fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
