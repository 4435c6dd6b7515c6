//! Timing tile configurations of the tensor-core attention kernel on the
//! GPU, for the autotuner.
//!
//! The compiler renders the kernel under several configurations
//! (`fluxc_codegen::attention::render_attention_with`, each under its own
//! name); [`AttentionBench::load`] compiles them as one NVRTC translation
//! unit, [`AttentionBench::prepare`] puts random q, k and v of one problem
//! on the device, and [`AttentionBench::run`] runs one variant on them,
//! returning its output (so the tuner can compare it with the default's)
//! and its time. Operands are passed as the kernel takes them: q, k and v
//! as tensor maps (`tensor_map`), boxes of the variant's tile rows.
//! Timing and operand copies are the tuners' shared ones (`bench`).

use std::ffi::c_void;
use std::path::PathBuf;

use cudarc::driver::result as drv;
use cudarc::driver::sys;
use fluxc_artifact::ElemType;

use crate::bench::{copies, pseudo_random, BenchContext, BenchTiming};
use crate::compile::{compile_named, nvrtc_options};
use crate::convert::{decode, encode};
use crate::cuda::{DeviceBuffer, Module};
use crate::plan::Param;
use crate::tensor_map::{encode as encode_map, TensorMapSpec};
use crate::RuntimeError;

/// One attention problem: contiguous bf16 `[batch, seq, heads, head_dim]`
/// operands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionProblem {
    /// Batch.
    pub batch: u32,
    /// Heads.
    pub heads: u32,
    /// Query length.
    pub seq_q: u32,
    /// Key/value length.
    pub seq_kv: u32,
    /// Head width.
    pub head_dim: u32,
    /// Score scale.
    pub scale: f32,
}

impl AttentionProblem {
    fn elements(self, seq: u32) -> u64 {
        u64::from(self.batch) * u64::from(seq) * u64::from(self.heads) * u64::from(self.head_dim)
    }
}

/// One variant to measure: an `extern "C"` kernel of the translation unit
/// and its launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttentionVariant {
    /// Its name in the source.
    pub name: String,
    /// Grid.
    pub grid: [u32; 3],
    /// Threads per block.
    pub threads: u32,
    /// Dynamic shared memory.
    pub shared_bytes: u32,
    /// Box rows of q.
    pub q_rows: u32,
    /// Box rows of k and v.
    pub kv_rows: u32,
}

/// What a variant did: its output after one launch and its median time.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionResult {
    /// Median µs per launch.
    pub us: f64,
    /// The output, as f32.
    pub output: Vec<f32>,
}

/// A GPU context for measuring attention kernels.
pub struct AttentionBench {
    gpu: BenchContext,
    arch: String,
    nvrtc: Vec<String>,
}

impl std::fmt::Debug for AttentionBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttentionBench")
            .field("arch", &self.arch)
            .finish()
    }
}

/// Compiled variants ([`AttentionBench::load`]).
pub struct AttentionVariants {
    module: Module,
}

/// One copy of a problem's operands on the device.
struct OperandSet {
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
}

/// A problem's operands on the device ([`AttentionBench::prepare`]).
pub struct PreparedAttention {
    problem: AttentionProblem,
    sets: Vec<OperandSet>,
    out: DeviceBuffer,
}

impl AttentionBench {
    /// A context on `device` compiling for `arch` with the CUDA headers in
    /// `include_dirs`.
    pub fn new(device: usize, arch: &str, include_dirs: &[PathBuf]) -> Result<Self, RuntimeError> {
        Ok(AttentionBench {
            gpu: BenchContext::new(device, false)?,
            arch: arch.to_string(),
            nvrtc: nvrtc_options(arch, include_dirs),
        })
    }

    /// Compiles `source` (one translation unit) and loads it.
    pub fn load(&self, source: &str) -> Result<AttentionVariants, RuntimeError> {
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(RuntimeError::driver("binding the context"))?;
        let (cubin, _log) =
            compile_named("attention_variants.cu", source, &self.arch, &self.nvrtc)?;
        let module = Module::load(&self.gpu.ctx, &cubin).map_err(|c| {
            RuntimeError::driver("loading the attention variants")(drv::DriverError(c))
        })?;
        Ok(AttentionVariants { module })
    }

    /// Random q, k and v of `problem` (as many copies as keep successive
    /// launches from finding their operands in L2) and an output buffer.
    pub fn prepare(&self, problem: AttentionProblem) -> Result<PreparedAttention, RuntimeError> {
        let (n_q, n_kv) = (
            problem.elements(problem.seq_q),
            problem.elements(problem.seq_kv),
        );
        let bytes = (n_q + 2 * n_kv) * 2;
        let n = |e: u64| {
            usize::try_from(e)
                .map_err(|_| RuntimeError::Device("an attention operand does not fit".into()))
        };
        let sets = (0..copies(self.gpu.l2_bytes, bytes))
            .map(|c| {
                let seed = 1 + 100 * c as u64;
                Ok(OperandSet {
                    q: self
                        .gpu
                        .upload(ElemType::Bf16, &pseudo_random(n(n_q)?, seed), "q")?,
                    k: self
                        .gpu
                        .upload(ElemType::Bf16, &pseudo_random(n(n_kv)?, seed + 1), "k")?,
                    v: self
                        .gpu
                        .upload(ElemType::Bf16, &pseudo_random(n(n_kv)?, seed + 2), "v")?,
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let out = DeviceBuffer::zeroed(
            &self.gpu.ctx,
            self.gpu.stream.cu_stream(),
            n_q * 2,
            "the attention output",
        )?;
        Ok(PreparedAttention { problem, sets, out })
    }

    /// The kernel parameters of `variant` on operand copy `set`.
    fn params(
        &self,
        prepared: &PreparedAttention,
        set: &OperandSet,
        variant: &AttentionVariant,
    ) -> Result<Vec<Param>, String> {
        let p = prepared.problem;
        let map = |buffer: &DeviceBuffer, seq: u32, rows: u32| {
            encode_map(&TensorMapSpec::attention_operand(
                buffer.ptr(),
                p.batch,
                seq,
                p.heads,
                p.head_dim,
                rows,
            ))
            .map(Param::TensorMap)
        };
        Ok(vec![
            map(&set.q, p.seq_q, variant.q_rows)?,
            map(&set.k, p.seq_kv, variant.kv_rows)?,
            map(&set.v, p.seq_kv, variant.kv_rows)?,
            Param::Ptr(prepared.out.ptr()),
            Param::I32(p.seq_q as i32),
            Param::I32(p.seq_kv as i32),
            Param::I32(p.heads as i32),
            Param::F32(p.scale),
        ])
    }

    fn launch(
        &self,
        func: sys::CUfunction,
        variant: &AttentionVariant,
        params: &[Param],
    ) -> Result<(), RuntimeError> {
        let mut values = params.to_vec();
        let mut ptrs: Vec<*mut c_void> = values.iter_mut().map(Param::as_kernel_param).collect();
        let g = variant.grid;
        // SAFETY: `func` belongs to the loaded module and takes exactly these
        // parameters (three tensor maps of live buffers, the output pointer,
        // three ints and the scale); its shared memory limit was raised.
        unsafe {
            drv::launch_kernel(
                func,
                (g[0], g[1], g[2]),
                (variant.threads, 1, 1),
                variant.shared_bytes,
                self.gpu.stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(RuntimeError::driver(format!(
            "launching `{}`",
            variant.name
        )))
    }

    /// Runs `variant` (a kernel of `variants`) on `prepared`: its output
    /// after one launch and its time. A variant the device cannot run (its
    /// shared memory over the limit, say) is the inner `Err`.
    pub fn run(
        &self,
        variants: &AttentionVariants,
        prepared: &PreparedAttention,
        variant: &AttentionVariant,
        timing: BenchTiming,
    ) -> Result<Result<AttentionResult, String>, RuntimeError> {
        let func = variants.module.function(&variant.name).map_err(|c| {
            RuntimeError::driver(format!("looking up `{}`", variant.name))(drv::DriverError(c))
        })?;
        // SAFETY: `func` belongs to the loaded module.
        let raised = unsafe {
            drv::function::set_function_attribute(
                func,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                i32::try_from(variant.shared_bytes).unwrap_or(i32::MAX),
            )
        };
        if let Err(e) = raised {
            return Ok(Err(format!(
                "{} bytes of shared memory are more than this device allows: {e}",
                variant.shared_bytes
            )));
        }
        let params = prepared
            .sets
            .iter()
            .map(|set| self.params(prepared, set, variant))
            .collect::<Result<Vec<_>, String>>();
        let params = match params {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        // The output of one launch, from a NaN-filled buffer.
        let n = prepared.problem.elements(prepared.problem.seq_q) as usize;
        let nan = encode(ElemType::Bf16, &vec![f32::NAN; n]);
        self.gpu.write(&prepared.out, &nan, "the output's poison")?;
        self.launch(func, variant, &params[0])?;
        self.gpu.sync(&format!("running `{}`", variant.name))?;
        let mut host = vec![0u8; n * 2];
        // SAFETY: `host` holds the output's bytes and lives until the sync.
        unsafe {
            drv::memcpy_dtoh_async(&mut host, prepared.out.ptr(), self.gpu.stream.cu_stream())
        }
        .map_err(RuntimeError::driver("reading the attention output"))?;
        self.gpu.sync("reading the attention output")?;
        let output = decode(ElemType::Bf16, &host);
        let us = self.gpu.time(timing, |i| {
            self.launch(func, variant, &params[i % params.len()])
        })?;
        Ok(Ok(AttentionResult { us, output }))
    }
}
