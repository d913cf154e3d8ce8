//! Where a run's wall time goes, stage by stage, when `NEUROAL_TRACE` is set: each stage waits
//! for the device before and after, so queued GPU work is charged to the stage that queued it,
//! and the totals are printed to stderr at the end of a prune. Off by default: the waits stall a
//! GPU's pipeline, so a traced run is slower than an untraced one.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::tensor::Device;

/// One run's stage times (nothing is timed when off).
pub struct Trace {
    on: bool,
    totals: Mutex<BTreeMap<&'static str, (Duration, usize)>>,
}

/// Waits until `device` has finished everything queued on it: burn's barrier. (A one-value
/// readback, used first, let the H100 charge 8 blocks' pruned forward passes 0.12 s in all.)
fn wait(device: &Device) {
    let _ = device.sync();
}

impl Trace {
    /// On where `NEUROAL_TRACE` is set (and not 0).
    pub fn from_env() -> Trace {
        let on = std::env::var_os("NEUROAL_TRACE").is_some_and(|v| !v.is_empty() && v != "0");
        Trace { on, totals: Mutex::new(BTreeMap::new()) }
    }

    pub fn off() -> Trace {
        Trace { on: false, totals: Mutex::new(BTreeMap::new()) }
    }

    /// Runs `f` as stage `name` on `device`: timed, device work included, when tracing.
    pub fn stage<T>(&self, name: &'static str, device: &Device, f: impl FnOnce() -> T) -> T {
        if !self.on {
            return f();
        }
        wait(device);
        let start = Instant::now();
        let out = f();
        wait(device);
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let e = totals.entry(name).or_default();
        e.0 += start.elapsed();
        e.1 += 1;
        out
    }

    /// Prints the stages' totals (largest first) under `title` and starts over.
    pub fn report(&self, title: &str) {
        if !self.on {
            return;
        }
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = totals.iter().map(|(k, v)| (*k, *v)).collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.0));
        let all: Duration = rows.iter().map(|r| r.1.0).sum();
        eprintln!("trace: {title}: {:.2} s in stages", all.as_secs_f64());
        for (name, (t, n)) in rows {
            eprintln!("trace:   {name:<28} {:>8.2} s {:>6} times", t.as_secs_f64(), n);
        }
        totals.clear();
    }
}
