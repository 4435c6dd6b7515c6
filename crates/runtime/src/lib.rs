//! The runtime apps link: loads a compiled artifact and real checkpoint
//! weights, and runs the schedule as one CUDA graph. It depends only on
//! `fluxc-artifact`, `fluxc-checkpoint` and `fluxc-autotune` (the search
//! GEMM tuning runs), never on the compiler.
//!
//! ```no_run
//! use std::path::Path;
//! use fluxc_runtime::{Engine, LoadOptions};
//!
//! # fn main() -> Result<(), fluxc_runtime::RuntimeError> {
//! let mut engine = Engine::load(
//!     Path::new("out/flux-schnell"),
//!     Path::new("/models/FLUX.1-schnell"),
//!     &LoadOptions::default(),
//! )?;
//! for input in engine.inputs().to_vec() {
//!     let n = engine.input_buffer(&input.name)?.elements() as usize;
//!     engine.set_input(&input.name, &vec![0.5; n])?;
//! }
//! engine.run()?;
//! let out = engine.output("sample")?;
//! let timing = engine.time_replays(3, 20)?;
//! println!("{} values, {:.2} ms per forward", out.len(), timing.median_ms());
//! # Ok(())
//! # }
//! ```
//!
//! Modules: `artifact` ([`Artifact`]: reading and validating the artifact
//! directory), [`weights`] (checkpoint layout selection and weight
//! streaming, fp8 quantization jobs), `quantize` (running those jobs on the
//! GPU with the runtime's own `kernels/quantize.cu`), [`fp8_cache`] (the
//! quantized-weights cache next to an artifact: stamp, file format),
//! `weight_fill` (filling the weight region at load: checkpoint, GPU
//! quantization or the cache; [`Fp8Origin`]), [`convert`] (f32 ↔
//! buffer dtypes), [`compile`] (NVRTC and the CUBIN cache), [`cuda`]
//! (library checks and RAII driver handles), `blas` (cuBLASLt, fp8 GEMMs
//! included), [`bench`](mod@bench) (what the GPU tuners share), [`attention_bench`]
//! (timing tile configurations of the attention kernel, for the autotuner),
//! `attention_split` (splitting an attention's last wave of query tiles
//! over their keys, planned at load; [`AttentionSplitPolicy`]), [`gemm_tuning`] (timing cuBLASLt's candidate algorithms of
//! every GEMM of a schedule, for `fluxc tune`), [`gemm_space`] (a GEMM's
//! cuBLASLt algorithm configurations as a search space), `gemm_algo`
//! (cuBLASLt's algorithm ids, capabilities and configuration attributes),
//! [`gemm_search`] (coordinate descent over that space), [`kernel_bench`] (timing
//! variants of a generated kernel, for the kernel autotuner), `plan` (device addresses, kernel parameters, extent checks), `tensor_map`
//! (the attention kernel's TMA descriptors),
//! `engine` ([`Engine`]), [`pipeline`] ([`Pipeline`]: a compiled
//! text-to-image pipeline, its denoising loop and VAE decode as one CUDA
//! graph, with the runtime's own `kernels/pipeline.cu`), `timing` ([`Timing`]), `options` ([`LoadOptions`]),
//! `error` ([`RuntimeError`]).

mod artifact;
pub mod attention_bench;
mod attention_split;
pub mod bench;
mod blas;
pub mod compile;
mod conv;
pub mod convert;
pub mod cuda;
mod engine;
mod error;
pub mod fp8_cache;
mod gemm_algo;
pub mod gemm_search;
pub mod gemm_space;
pub mod gemm_tuning;
pub mod kernel_bench;
mod options;
pub mod pipeline;
mod plan;
mod quantize;
mod tensor_map;
mod timing;
mod weight_fill;
pub mod weights;

pub use artifact::Artifact;
pub use attention_split::AttentionSplitPolicy;
pub use engine::Engine;
pub use error::RuntimeError;
pub use options::{LoadOptions, DEFAULT_INCLUDE_DIRS, INCLUDE_ENV};
pub use pipeline::{Image, Pipeline, Start};
pub use timing::{Stats, Timing};
pub use weight_fill::Fp8Origin;
