//! [`LoadOptions`]: how [`Engine::load`](crate::Engine::load) finds the CUDA
//! headers, where it caches compiled kernels, where it quantizes fp8
//! weights (and whether it keeps them quantized next to the artifact),
//! whether attention splits its last wave, and what it prints.

use std::path::PathBuf;

use crate::attention_split::AttentionSplitPolicy;

/// Environment variable with the CUDA include directories (colon-separated).
pub const INCLUDE_ENV: &str = "FLUXC_CUDA_INCLUDE";

/// Include directories used when [`INCLUDE_ENV`] is not set.
pub const DEFAULT_INCLUDE_DIRS: [&str; 2] =
    ["/usr/local/cuda/include", "/usr/local/cuda/include/cccl"];

/// Options of [`Engine::load`](crate::Engine::load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// CUDA device ordinal.
    pub device: usize,
    /// Directories NVRTC searches for `cuda_bf16.h` and friends (NVRTC 13
    /// has no built-in CUDA headers). Default: [`INCLUDE_ENV`] split at `:`,
    /// else [`DEFAULT_INCLUDE_DIRS`].
    pub cuda_include_dirs: Vec<PathBuf>,
    /// Where compiled kernels (CUBINs) are cached; `None` compiles every
    /// time. Default: `$XDG_CACHE_HOME/fluxc`, else `~/.cache/fluxc`.
    pub cache_dir: Option<PathBuf>,
    /// Record the schedule into a CUDA graph (default). Without it,
    /// [`Engine::run`](crate::Engine::run) launches every step directly.
    pub capture_graph: bool,
    /// Print progress (compile, weights, capture) to stderr (default).
    pub progress: bool,
    /// Quantize fp8 weights on the GPU while loading (default). Without it
    /// they are derived on the host in f32, the reference the GPU kernels
    /// match bit for bit, which takes far longer for a large model.
    pub quantize_on_gpu: bool,
    /// Take the fp8 weights from the artifact's quantized-weights cache
    /// (`<artifact>/weights.fp8.safetensors`, [`crate::fp8_cache`]) when its
    /// stamp matches the artifact and the checkpoint (default). A stale or
    /// corrupt cache is ignored with a message, and the weights quantized.
    pub use_quantized_cache: bool,
    /// After loading, write the fp8 weights and their scales to that cache
    /// (atomically; an error names the file), unless they came from it.
    pub save_quantized: bool,
    /// Whether attention steps whose kernel can split query tiles over
    /// their keys do so for their last wave of tiles, planned for the
    /// device's SM count (default), for another count, or not at all.
    pub attention_split: AttentionSplitPolicy,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: 0,
            cuda_include_dirs: default_include_dirs(std::env::var_os(INCLUDE_ENV)),
            cache_dir: default_cache_dir(
                std::env::var_os("XDG_CACHE_HOME"),
                std::env::var_os("HOME"),
            ),
            capture_graph: true,
            progress: true,
            quantize_on_gpu: true,
            use_quantized_cache: true,
            save_quantized: false,
            attention_split: AttentionSplitPolicy::Auto,
        }
    }
}

/// The include directories for a value of [`INCLUDE_ENV`].
fn default_include_dirs(env: Option<std::ffi::OsString>) -> Vec<PathBuf> {
    match env {
        Some(v) if !v.is_empty() => std::env::split_paths(&v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        _ => DEFAULT_INCLUDE_DIRS.iter().map(PathBuf::from).collect(),
    }
}

/// The cache directory for values of `XDG_CACHE_HOME` and `HOME`.
fn default_cache_dir(
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    match (xdg, home) {
        (Some(x), _) if !x.is_empty() => Some(PathBuf::from(x).join("fluxc")),
        (_, Some(h)) if !h.is_empty() => Some(PathBuf::from(h).join(".cache").join("fluxc")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_dirs_come_from_the_environment_or_defaults() {
        assert_eq!(
            default_include_dirs(Some("/a/include:/b/cccl".into())),
            vec![PathBuf::from("/a/include"), PathBuf::from("/b/cccl")]
        );
        assert_eq!(
            default_include_dirs(None),
            vec![
                PathBuf::from("/usr/local/cuda/include"),
                PathBuf::from("/usr/local/cuda/include/cccl")
            ]
        );
        assert_eq!(default_include_dirs(Some("".into())).len(), 2);
    }

    #[test]
    fn cache_dir_prefers_xdg() {
        assert_eq!(
            default_cache_dir(Some("/x".into()), Some("/h".into())),
            Some(PathBuf::from("/x/fluxc"))
        );
        assert_eq!(
            default_cache_dir(None, Some("/h".into())),
            Some(PathBuf::from("/h/.cache/fluxc"))
        );
        assert_eq!(default_cache_dir(Some("".into()), None), None);
    }
}
