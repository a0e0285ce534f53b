//! `ember bench`: the speed of real training steps of a recipe ([`train_steps`]) and of the
//! sequence mixers and ops alone over a grid of shapes ([`ops::run`]), with the device facts
//! that turn them into utilisation: peak FLOP/s ([`peak`]) and peak memory ([`memory`]).
pub mod memory;
pub mod ops;
pub mod peak;
mod train;

pub use memory::MemoryProbe;
pub use train::{train_steps, TrainBench, TrainBenchOptions};

use anyhow::{anyhow, Context, Result};
use burn::tensor::backend::Backend;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Waits until every operation queued on `device` has finished (GPU backends run
/// asynchronously; a clock read without this would time the launch, not the work).
pub fn sync<B: Backend>(device: &B::Device) -> Result<()> {
    B::sync(device).map_err(|e| anyhow!("{} failed while syncing: {e}", B::name(device)))
}

/// Runs `f` `warmup` times, then `reps` times each timed from a synced device to a synced
/// device, and returns the durations of the timed runs.
pub fn time_reps<B: Backend>(device: &B::Device, warmup: usize, reps: usize, mut f: impl FnMut()) -> Result<Vec<Duration>> {
    for _ in 0..warmup {
        f();
    }
    sync::<B>(device)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        f();
        sync::<B>(device)?;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// The median of `times` in milliseconds (`NaN` for none).
pub fn median_ms(times: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    match ms.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => ms[n / 2],
        n => (ms[n / 2 - 1] + ms[n / 2]) / 2.0,
    }
}

/// Writes `rows` to `path` as JSON lines, one object per row.
pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut out = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.push(b'\n');
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&out))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Bytes as GiB.
pub fn gib(bytes: f64) -> f64 {
    bytes / (1u64 << 30) as f64
}
