//! Peak FLOP/s of a device, the denominator of MFU: a table of known GPUs (dense tensor-core
//! figures from the vendor's datasheets) and an estimate for CPUs from `/proc/cpuinfo`.
use ember_ops::precision::Precision;

/// A peak throughput and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Peak {
    pub tflops: f64,
    /// E.g. "NVIDIA H100 80GB HBM3: H100 SXM bf16 dense (datasheet)".
    pub source: String,
}

/// A known GPU: its `nvidia-smi` name contains `has` and none of `lacks`.
struct Gpu {
    has: &'static str,
    lacks: &'static [&'static str],
    label: &'static str,
    /// Dense bf16 tensor-core TFLOP/s.
    bf16: f64,
    /// f32 TFLOP/s without tensor cores.
    f32: f64,
}

/// Known GPUs, first match wins.
const GPUS: &[Gpu] = &[
    Gpu { has: "H100", lacks: &["PCIe", "NVL"], label: "H100 SXM", bf16: 989.0, f32: 67.0 },
    Gpu { has: "H100 PCIe", lacks: &[], label: "H100 PCIe", bf16: 756.0, f32: 51.0 },
    Gpu { has: "H100 NVL", lacks: &[], label: "H100 NVL", bf16: 835.0, f32: 60.0 },
    // H200 and GH200 have the H100 SXM's compute (with more and faster memory).
    Gpu { has: "H200", lacks: &[], label: "H200 (= H100 SXM)", bf16: 989.0, f32: 67.0 },
    Gpu { has: "A100", lacks: &[], label: "A100", bf16: 312.0, f32: 19.5 },
];

/// The peak of the GPU named `name` (as `nvidia-smi` prints it) for `precision`, if known.
pub fn gpu_peak(name: &str, precision: Precision) -> Option<Peak> {
    let gpu = GPUS.iter().find(|g| name.contains(g.has) && !g.lacks.iter().any(|n| name.contains(n)))?;
    let (tflops, what) = match precision {
        Precision::Bf16 => (gpu.bf16, "bf16 dense tensor-core"),
        Precision::F32 => (gpu.f32, "f32 without tensor cores"),
    };
    Some(Peak { tflops, source: format!("{name}: {} {what} (datasheet)", gpu.label) })
}

/// An estimate of a CPU's f32 peak from a `/proc/cpuinfo` text, using at most `cores` cores:
/// cores × clock × FLOP/cycle/core, where a core does 32 f32 FLOP/cycle with AVX2+FMA (two
/// 8-wide FMA units) and twice that with AVX-512 (except on AMD Zen 4, which splits 512-bit
/// operations over its 256-bit units). The clock is the base clock in the model
/// name when it states one (Intel), else the first `cpu MHz` (the current clock).
pub fn cpu_peak(cpuinfo: &str, cores: usize) -> Option<Peak> {
    let field = |key: &str| {
        cpuinfo.lines().find(|l| l.split(':').next().map(str::trim) == Some(key)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim())
    };
    let listed = cpuinfo.lines().filter(|l| l.split(':').next().map(str::trim) == Some("processor")).count();
    let cores = cores.min(listed.max(1));
    let model = field("model name").unwrap_or("CPU");
    let base_ghz = model.split_once('@').and_then(|(_, f)| f.trim().strip_suffix("GHz")?.trim().parse::<f64>().ok());
    let ghz = base_ghz.or_else(|| Some(field("cpu MHz")?.parse::<f64>().ok()? / 1e3))?;
    let flags: Vec<&str> = field("flags").unwrap_or("").split_whitespace().collect();
    let has = |f: &str| flags.contains(&f);
    // AMD's Zen 4 (family 25) runs AVX-512 on its two 256-bit FMA pipes: no more FLOP/cycle.
    let amd_family = (field("vendor_id") == Some("AuthenticAMD")).then(|| field("cpu family")?.parse::<u32>().ok()).flatten();
    let (per_cycle, isa) = if has("avx512f") && amd_family.is_some_and(|f| f <= 25) {
        (32.0, "AVX-512 on 256-bit units (Zen 4)")
    } else if has("avx512f") {
        (64.0, "AVX-512")
    } else if has("avx2") && has("fma") {
        (32.0, "AVX2+FMA")
    } else if has("avx") {
        (16.0, "AVX")
    } else {
        (8.0, "SSE")
    };
    let tflops = cores as f64 * ghz * 1e9 * per_cycle / 1e12;
    Some(Peak {
        tflops,
        source: format!("{model}: estimated, {cores} cores × {ghz:.2} GHz × {per_cycle} f32 FLOP/cycle ({isa})"),
    })
}

/// This machine's CPU peak (f32) estimate, from `/proc/cpuinfo` and the cores this process may use.
pub fn this_cpu_peak() -> Option<Peak> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpu_peak(&cpuinfo, cores)
}

/// One `nvidia-smi --query-gpu=FIELD` column, a line per GPU; empty without `nvidia-smi`.
pub fn nvidia_smi(field: &str) -> Vec<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args([format!("--query-gpu={field}").as_str(), "--format=csv,noheader,nounits"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).lines().map(|l| l.trim().to_string()).collect(),
        _ => Vec::new(),
    }
}

/// The peak of NVIDIA GPU `index` (from its `nvidia-smi` name) for `precision`.
pub fn nvidia_gpu_peak(index: usize, precision: Precision) -> Result<Peak, String> {
    let names = nvidia_smi("name");
    let name = names.get(index).ok_or_else(|| format!("no GPU {index} in nvidia-smi's list; pass --peak-tflops"))?;
    gpu_peak(name, precision).ok_or_else(|| format!("no peak known for {name:?}; pass --peak-tflops"))
}

/// Total memory of NVIDIA GPU `index` in bytes, from `nvidia-smi`.
pub fn nvidia_gpu_memory(index: usize) -> Option<f64> {
    let mib: f64 = nvidia_smi("memory.total").get(index)?.parse().ok()?;
    Some(mib * (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_datasheet_peaks_by_gpu_name_and_dtype() {
        let h100 = gpu_peak("NVIDIA H100 80GB HBM3", Precision::Bf16).unwrap();
        assert_eq!(h100.tflops, 989.0);
        assert!(h100.source.contains("H100 SXM"), "{}", h100.source);
        assert_eq!(gpu_peak("NVIDIA H100 80GB HBM3", Precision::F32).unwrap().tflops, 67.0);
        assert_eq!(gpu_peak("NVIDIA H100 PCIe", Precision::Bf16).unwrap().tflops, 756.0);
        assert_eq!(gpu_peak("NVIDIA H100 NVL", Precision::Bf16).unwrap().tflops, 835.0);
        assert_eq!(gpu_peak("NVIDIA H200", Precision::Bf16).unwrap().tflops, 989.0);
        assert_eq!(gpu_peak("NVIDIA A100-SXM4-80GB", Precision::F32).unwrap().tflops, 19.5);
        assert_eq!(gpu_peak("NVIDIA GeForce RTX 4090", Precision::Bf16), None);
    }

    #[test]
    fn estimates_a_cpu_peak_from_cpuinfo() {
        let one = |model: &str, mhz: &str, flags: &str| {
            format!("processor\t: 0\nmodel name\t: {model}\ncpu MHz\t\t: {mhz}\nflags\t\t: {flags}\n\n")
        };
        let xeon512 = one("Intel(R) Xeon(R) Platinum 8480+", "2000.0", "fpu sse2 avx fma avx2 avx512f").repeat(2);
        let peak = cpu_peak(&xeon512, 16).unwrap(); // only 2 listed
        assert!((peak.tflops - 2.0 * 2.0 * 64.0 / 1e3).abs() < 1e-9, "{peak:?}");
        assert!(peak.source.contains("estimated") && peak.source.contains("AVX-512"));
        // Zen 4 (this project's CI machine) has AVX-512 but 256-bit FMA units.
        let zen4 = format!("vendor_id\t: AuthenticAMD\ncpu family\t: 25\n{}", one("AMD EPYC", "2596.134", "avx fma avx2 avx512f"));
        let peak = cpu_peak(&zen4, 1).unwrap();
        assert!((peak.tflops - 2.596134 * 32.0 / 1e3).abs() < 1e-9, "{peak:?}");
        // Intel states its base clock in the model name.
        let xeon = one("Intel(R) Xeon(R) CPU @ 2.20GHz", "3100.0", "sse2 avx fma avx2").repeat(4);
        assert!((cpu_peak(&xeon, 2).unwrap().tflops - 2.0 * 2.2 * 32.0 / 1e3).abs() < 1e-9);
        assert_eq!(cpu_peak("", 2), None);
    }
}
