//! Timing variants of a generated kernel on the GPU, for the autotuner.
//!
//! The compiler renders one kernel under several launch configurations
//! (`fluxc_codegen::launch`); [`KernelBench::load`] compiles them as one
//! NVRTC translation unit, [`KernelBench::prepare`] puts random inputs on
//! the device, and [`KernelBench::run`] runs one variant on them, returning
//! its outputs (so the tuner can check them against the default's) and its
//! time.
//! Every parameter of a generated kernel is a device pointer, plus, for
//! grid-wide reductions, a scratch pointer that must start zeroed (the
//! kernel leaves it zeroed again).
//!
//! Timing is as for GEMMs (`gemm_tuning`): warm-up launches, then batches of
//! back-to-back launches between two CUDA events, the median batch divided
//! by its launches; inputs come in up to four copies that successive
//! launches rotate through, so a small kernel is not timed from a warm L2.
//! Outputs start as NaN, so an element a variant fails to write shows up in
//! the comparison.

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::result as drv;
use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaStream};
use fluxc_artifact::ElemType;

use crate::compile::{compile_named, nvrtc_options};
use crate::convert::{decode, encode};
use crate::cuda::{check_device, check_libraries, DeviceBuffer, Module};
use crate::timing::Stats;
use crate::RuntimeError;

/// One pointer parameter of the kernels measured together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchParam {
    /// Element type.
    pub dtype: ElemType,
    /// Elements.
    pub elements: u64,
    /// Whether the kernels write it.
    pub written: bool,
}

/// One variant to measure: an `extern "C"` kernel of the translation unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchLaunch {
    /// Its name in the source.
    pub name: String,
    /// Grid.
    pub grid: [u32; 3],
    /// Block.
    pub block: [u32; 3],
    /// Words of zeroed scratch it takes as its last parameter (0: none).
    pub scratch_words: u32,
}

/// What a variant did.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    /// Median µs per launch.
    pub us: f64,
    /// Every written parameter after one launch, in parameter order, as f32.
    pub outputs: Vec<Vec<f32>>,
}

/// How [`KernelBench::measure`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchTiming {
    /// Untimed launches.
    pub warmup: usize,
    /// Timed batches.
    pub batches: usize,
    /// Launches per batch.
    pub per_batch: usize,
}

impl Default for BenchTiming {
    fn default() -> Self {
        BenchTiming {
            warmup: 3,
            batches: 5,
            per_batch: 20,
        }
    }
}

/// A GPU context for measuring kernels.
pub struct KernelBench {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    nvrtc: Vec<String>,
    l2_bytes: u64,
}

impl std::fmt::Debug for KernelBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBench")
            .field("arch", &self.arch)
            .finish()
    }
}

/// Deterministic values in [-1, 1).
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// One copy of the parameters of a measurement.
struct ParamSet {
    buffers: Vec<DeviceBuffer>,
    scratch: DeviceBuffer,
}

/// Compiled variants ([`KernelBench::load`]).
pub struct Variants {
    module: Module,
}

/// Parameters on the device ([`KernelBench::prepare`]).
pub struct Prepared {
    params: Vec<BenchParam>,
    sets: Vec<ParamSet>,
}

impl KernelBench {
    /// A context on `device` compiling for `arch` with the CUDA headers in
    /// `include_dirs`.
    pub fn new(device: usize, arch: &str, include_dirs: &[PathBuf]) -> Result<Self, RuntimeError> {
        check_libraries(false)?;
        check_device(device)?;
        let ctx =
            CudaContext::new(device).map_err(RuntimeError::driver("creating the CUDA context"))?;
        // SAFETY: everything is ordered on the one stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(RuntimeError::driver("creating a stream"))?;
        let l2_bytes = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .map_err(RuntimeError::driver("querying the L2 size"))? as u64;
        Ok(KernelBench {
            ctx,
            stream,
            arch: arch.to_string(),
            nvrtc: nvrtc_options(arch, include_dirs),
            l2_bytes,
        })
    }

    /// The GPU's name.
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    fn sync(&self, what: &str) -> Result<(), RuntimeError> {
        self.stream
            .synchronize()
            .map_err(RuntimeError::driver(what.to_string()))
    }

    fn params(
        &self,
        params: &[BenchParam],
        scratch_words: u32,
        seed: u64,
    ) -> Result<ParamSet, RuntimeError> {
        let s = self.stream.cu_stream();
        let mut buffers = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let n = usize::try_from(p.elements)
                .map_err(|_| RuntimeError::Device("a parameter does not fit this host".into()))?;
            let values = if p.written {
                vec![f32::NAN; n]
            } else {
                pseudo_random(n, seed + i as u64)
            };
            let bytes = encode(p.dtype, &values);
            let buffer = DeviceBuffer::zeroed(&self.ctx, s, bytes.len() as u64, "a parameter")?;
            // SAFETY: `buffer` holds `bytes.len()` bytes; `bytes` lives until the sync.
            unsafe { drv::memcpy_htod_async(buffer.ptr(), &bytes, s) }
                .map_err(RuntimeError::driver("uploading a parameter"))?;
            self.sync("uploading a parameter")?;
            buffers.push(buffer);
        }
        let scratch =
            DeviceBuffer::zeroed(&self.ctx, s, u64::from(scratch_words.max(1)) * 4, "scratch")?;
        Ok(ParamSet { buffers, scratch })
    }

    fn launch(
        &self,
        func: sys::CUfunction,
        launch: &BenchLaunch,
        set: &ParamSet,
    ) -> Result<(), RuntimeError> {
        let mut values: Vec<u64> = set.buffers.iter().map(DeviceBuffer::ptr).collect();
        if launch.scratch_words > 0 {
            values.push(set.scratch.ptr());
        }
        let mut ptrs: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect();
        let (g, b) = (launch.grid, launch.block);
        // SAFETY: `func` belongs to the loaded module; a generated kernel
        // takes exactly these pointers (its parameters, then its scratch),
        // each addressing a live buffer of the size the compiler declared.
        unsafe {
            drv::launch_kernel(
                func,
                (g[0], g[1], g[2]),
                (b[0], b[1], b[2]),
                0,
                self.stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(RuntimeError::driver(format!("launching `{}`", launch.name)))
    }

    /// Compiles `source` (one translation unit) and loads it.
    pub fn load(&self, source: &str) -> Result<Variants, RuntimeError> {
        self.ctx
            .bind_to_thread()
            .map_err(RuntimeError::driver("binding the context"))?;
        let (cubin, _log) = compile_named("variants.cu", source, &self.arch, &self.nvrtc)?;
        let module = Module::load(&self.ctx, &cubin).map_err(|c| {
            RuntimeError::driver("loading the kernel variants")(drv::DriverError(c))
        })?;
        Ok(Variants { module })
    }

    /// Device copies of `params` (inputs random, outputs NaN) and zeroed
    /// scratch of `scratch_words`, as many copies as keep the inputs of
    /// successive launches from sharing L2.
    pub fn prepare(
        &self,
        params: &[BenchParam],
        scratch_words: u32,
    ) -> Result<Prepared, RuntimeError> {
        let input_bytes: u64 = params
            .iter()
            .filter(|p| !p.written)
            .map(|p| p.elements * p.dtype.size_bytes())
            .sum();
        let copies = (2 * self.l2_bytes).div_ceil(input_bytes.max(1)).clamp(1, 4) as usize;
        let sets = (0..copies)
            .map(|c| self.params(params, scratch_words, 1 + 100 * c as u64))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prepared {
            params: params.to_vec(),
            sets,
        })
    }

    /// Runs `launch` (a kernel of `variants`) on `prepared`: its outputs
    /// after one launch and its time. A variant the device cannot run (too
    /// many registers for its block) is the inner `Err`.
    pub fn run(
        &self,
        variants: &Variants,
        prepared: &Prepared,
        launch: &BenchLaunch,
        timing: BenchTiming,
    ) -> Result<Result<BenchResult, String>, RuntimeError> {
        let func = variants.module.function(&launch.name).map_err(|c| {
            RuntimeError::driver(format!("looking up `{}`", launch.name))(drv::DriverError(c))
        })?;
        // SAFETY: `func` belongs to the loaded module.
        let max_threads = unsafe {
            drv::function::get_function_attribute(
                func,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
            )
        }
        .map_err(RuntimeError::driver("querying a kernel"))?;
        let threads: u32 = launch.block.iter().product();
        if threads as i32 > max_threads {
            return Ok(Err(format!(
                "a block of {threads} threads exceeds the {max_threads} this variant can run"
            )));
        }
        self.measure_one(func, launch, &prepared.params, &prepared.sets, timing)
            .map(Ok)
    }

    fn measure_one(
        &self,
        func: sys::CUfunction,
        launch: &BenchLaunch,
        params: &[BenchParam],
        sets: &[ParamSet],
        timing: BenchTiming,
    ) -> Result<BenchResult, RuntimeError> {
        // Outputs of one launch on the first copy, from NaN-filled buffers.
        for (p, buffer) in params.iter().zip(&sets[0].buffers) {
            if p.written {
                let nan = encode(p.dtype, &vec![f32::NAN; p.elements as usize]);
                // SAFETY: `buffer` holds the encoded bytes; `nan` lives until the sync.
                unsafe { drv::memcpy_htod_async(buffer.ptr(), &nan, self.stream.cu_stream()) }
                    .map_err(RuntimeError::driver("poisoning an output"))?;
                self.sync("poisoning an output")?;
            }
        }
        self.launch(func, launch, &sets[0])?;
        self.sync(&format!("running `{}`", launch.name))?;
        let mut outputs = Vec::new();
        for (p, buffer) in params.iter().zip(&sets[0].buffers) {
            if p.written {
                let mut host = vec![0u8; (p.elements * p.dtype.size_bytes()) as usize];
                // SAFETY: `host` holds the buffer's bytes and lives until the sync.
                unsafe { drv::memcpy_dtoh_async(&mut host, buffer.ptr(), self.stream.cu_stream()) }
                    .map_err(RuntimeError::driver("reading an output"))?;
                self.sync("reading an output")?;
                outputs.push(decode(p.dtype, &host));
            }
        }
        for i in 0..timing.warmup {
            self.launch(func, launch, &sets[i % sets.len()])?;
        }
        let event = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(RuntimeError::driver("creating a timing event"))
        };
        let mut batches = Vec::new();
        for _ in 0..timing.batches.max(1) {
            let (start, end) = (event()?, event()?);
            start
                .record(&self.stream)
                .map_err(RuntimeError::driver("recording a timing event"))?;
            for i in 0..timing.per_batch.max(1) {
                self.launch(func, launch, &sets[i % sets.len()])?;
            }
            end.record(&self.stream)
                .map_err(RuntimeError::driver("recording a timing event"))?;
            batches.push((start, end));
        }
        self.sync(&format!("timing `{}`", launch.name))?;
        let mut us = Vec::new();
        for (start, end) in &batches {
            let ms = start
                .elapsed_ms(end)
                .map_err(RuntimeError::driver("reading a timing event"))?;
            us.push(f64::from(ms) * 1e3 / timing.per_batch.max(1) as f64);
        }
        Ok(BenchResult {
            us: Stats::of(&us).map_or(f64::NAN, |s| s.median),
            outputs,
        })
    }
}
