//! Peak memory of a benchmark, measured however the device allows: the process's peak resident
//! set on a CPU backend, the allocator pool's high-water mark on a GPU backend that exposes it
//! (the caller supplies that sampler, so this crate stays backend-generic), or not at all.

/// Tracks the largest of a series of memory readings.
pub struct MemoryProbe {
    /// What is measured, e.g. "process peak RSS (VmHWM)".
    what: String,
    read: Option<Box<dyn FnMut() -> Option<u64>>>,
    /// Why nothing can be measured, when `read` is `None`.
    reason: String,
    peak: Option<u64>,
}

impl MemoryProbe {
    /// A probe whose `read` returns the current value of `what` in bytes (`None` when a
    /// reading fails); the peak is the largest reading taken.
    pub fn new(what: impl Into<String>, read: impl FnMut() -> Option<u64> + 'static) -> Self {
        Self { what: what.into(), read: Some(Box::new(read)), reason: String::new(), peak: None }
    }

    /// The process's peak resident set size, from `VmHWM` in `/proc/self/status` (Linux): on
    /// a CPU backend the tensors live in the process, so this bounds what training needed
    /// (it also counts the binary, the tokenizer and memory-mapped data pages touched).
    pub fn process_peak_rss() -> Self {
        if process_hwm_bytes().is_none() {
            return Self::unavailable("no VmHWM in /proc/self/status (not Linux?)");
        }
        Self::new("process peak RSS (VmHWM)", process_hwm_bytes)
    }

    /// A probe that reports "n/a" with `reason`.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self { what: String::new(), read: None, reason: reason.into(), peak: None }
    }

    /// Takes a reading now.
    pub fn sample(&mut self) {
        if let Some(reading) = self.read.as_mut().and_then(|read| read()) {
            self.peak = Some(self.peak.map_or(reading, |p| p.max(reading)));
        }
    }

    /// The largest reading, in bytes.
    pub fn peak_bytes(&self) -> Option<u64> {
        self.peak
    }

    /// "1.23 GiB (what)" or "n/a (why)".
    pub fn describe(&self) -> String {
        match (self.peak, &self.read) {
            (Some(bytes), _) => format!("{:.2} GiB ({})", super::gib(bytes as f64), self.what),
            (None, Some(_)) => format!("n/a ({}: no reading succeeded)", self.what),
            (None, None) => format!("n/a ({})", self.reason),
        }
    }
}

/// `VmHWM` of this process in bytes.
pub fn process_hwm_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_kib(&status, "VmHWM").map(|kib| kib * 1024)
}

/// The value in KiB of `key` in a `/proc/<pid>/status` text (`VmHWM:   1696 kB`).
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.split(':').next() == Some(key))?;
    line.split(':').nth(1)?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm_and_keeps_the_largest_reading() {
        let status = "Name:\tember\nVmPeak:\t    3060 kB\nVmHWM:\t    1696 kB\nVmRSS:\t    1000 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(1696));
        assert_eq!(status_kib(status, "VmSwap"), None);

        let mut readings = vec![3u64 << 30, 5 << 30, 4 << 30].into_iter();
        let mut probe = MemoryProbe::new("pool", move || readings.next());
        (0..4).for_each(|_| probe.sample());
        assert_eq!(probe.peak_bytes(), Some(5 << 30));
        assert_eq!(probe.describe(), "5.00 GiB (pool)");
        assert_eq!(MemoryProbe::unavailable("no API").describe(), "n/a (no API)");
        if cfg!(target_os = "linux") {
            assert!(process_hwm_bytes().unwrap() > 0);
        }
    }
}
