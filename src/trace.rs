//! Where a run's wall time goes, stage by stage, when `NEUROAL_TRACE` is set: each stage waits
//! for the device before and after, so queued GPU work is charged to the stage that queued it,
//! and the totals are printed to stderr at the end of a prune. Off by default: the waits stall a
//! GPU's pipeline, so a traced run is slower than an untraced one.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use burn::tensor::Device;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("NEUROAL_TRACE").is_some_and(|v| !v.is_empty() && v != "0"))
}

static TOTALS: Mutex<BTreeMap<&'static str, (Duration, usize)>> = Mutex::new(BTreeMap::new());

/// Waits until `device` has finished everything queued on it: burn's barrier. (A one-value
/// readback, used first, let the H100 charge 8 blocks' pruned forward passes 0.12 s in all.)
fn wait(device: &Device) {
    let _ = device.sync();
}

/// Runs `f` as stage `name` on `device`: timed, device work included, when tracing.
pub fn stage<T>(name: &'static str, device: &Device, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    wait(device);
    let start = Instant::now();
    let out = f();
    wait(device);
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let e = totals.entry(name).or_default();
    e.0 += start.elapsed();
    e.1 += 1;
    out
}

/// Prints the stages' totals (largest first) under `title` and starts over.
pub fn report(title: &str) {
    if !enabled() {
        return;
    }
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = totals.iter().map(|(k, v)| (*k, *v)).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.0));
    let all: Duration = rows.iter().map(|r| r.1.0).sum();
    eprintln!("trace: {title}: {:.2} s in stages", all.as_secs_f64());
    for (name, (t, n)) in rows {
        eprintln!("trace:   {name:<28} {:>8.2} s {:>6} times", t.as_secs_f64(), n);
    }
    totals.clear();
}
