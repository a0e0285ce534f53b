//! Run-time choice of backend: `--device` names one of the backends compiled in.

/// The device names this build accepts, for error messages.
pub fn compiled() -> Vec<&'static str> {
    let mut names = vec!["cpu"];
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda[:i]");
    }
    if cfg!(feature = "tch") {
        names.push("tch-cpu");
        names.push("tch-cuda[:i]");
    }
    names
}

/// The device `auto` stands for, given what this build has and this machine shows: CUDA (Burn's
/// CubeCL backend, then libtorch) when an NVIDIA driver is loaded, wgpu when a GPU render node
/// exists, else the CPU (flex for bf16, which ndarray cannot compute in). Other names pass through.
pub fn resolve(name: &str, precision: ember_ops::precision::Precision) -> String {
    if name != "auto" {
        return name.to_string();
    }
    let nvidia = std::path::Path::new("/proc/driver/nvidia/version").exists();
    let render_node = std::fs::read_dir("/dev/dri")
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("renderD")))
        .unwrap_or(false);
    let bf16 = precision == ember_ops::precision::Precision::Bf16;
    let pick = if cfg!(feature = "cuda") && nvidia {
        "cuda"
    } else if cfg!(feature = "tch") && nvidia {
        "tch-cuda"
    } else if cfg!(feature = "wgpu") && render_node {
        "wgpu"
    } else if bf16 && cfg!(feature = "flex") {
        "flex"
    } else if bf16 && cfg!(feature = "tch") {
        "tch-cpu"
    } else {
        "cpu"
    };
    pick.to_string()
}

/// Parses `cuda:1` into `1` (`cuda` alone is device 0).
#[allow(dead_code)]
pub fn index(device: &str) -> usize {
    device.split_once(':').and_then(|(_, i)| i.parse().ok()).unwrap_or(0)
}

/// `with_backend!(device_name, |B, device| body)`: runs `body` with `B` bound to the autodiff
/// backend named by `device_name` and `device` to its device.
macro_rules! with_backend {
    ($name:expr, |$B:ident, $device:ident| $body:expr) => {{
        let name: &str = $name;
        #[allow(unreachable_patterns)]
        match name.split(':').next().unwrap_or("") {
            // The default CPU backend (chosen by measurement, see docs/BENCHMARKS.md).
            #[cfg(feature = "ndarray")]
            "cpu" | "ndarray" => {
                type $B = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "flex")]
            "flex" => {
                type $B = burn::backend::Autodiff<burn::backend::Flex<f32>>;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            "wgpu" => {
                type $B = burn::backend::Autodiff<burn::backend::Wgpu>;
                let $device = burn::backend::wgpu::WgpuDevice::DefaultDevice;
                $body
            }
            #[cfg(feature = "cuda")]
            "cuda" => {
                type $B = burn::backend::Autodiff<burn::backend::Cuda>;
                let $device = burn::backend::cuda::CudaDevice::new($crate::backend::index(name));
                $body
            }
            #[cfg(feature = "tch")]
            "tch-cpu" => {
                type $B = burn::backend::Autodiff<burn::backend::LibTorch>;
                let $device = burn::backend::libtorch::LibTorchDevice::Cpu;
                $body
            }
            #[cfg(feature = "tch")]
            "tch-cuda" => {
                type $B = burn::backend::Autodiff<burn::backend::LibTorch>;
                let $device = burn::backend::libtorch::LibTorchDevice::Cuda($crate::backend::index(name));
                $body
            }
            other => Err(anyhow::anyhow!(
                "device {other:?} is not available in this build (compiled: {}); see README.md for building with other backends",
                $crate::backend::compiled().join(", ")
            )),
        }
    }};
}
pub(crate) use with_backend;
