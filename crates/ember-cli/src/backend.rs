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
