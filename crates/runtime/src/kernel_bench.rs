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
//! Timing, operand copies and the context are the tuners' shared ones
//! (`bench`): warm-up launches, then batches of back-to-back launches
//! between two CUDA events; inputs come in up to four copies that
//! successive launches rotate through, so a small kernel is not timed from
//! a warm L2.
//! Outputs start as NaN, so an element a variant fails to write shows up in
//! the comparison.

use std::ffi::c_void;
use std::path::PathBuf;

use cudarc::driver::result as drv;
use cudarc::driver::sys;
use fluxc_artifact::ElemType;

pub use crate::bench::BenchTiming;
use crate::bench::{copies, pseudo_random, BenchContext};
use crate::compile::{compile_named, nvrtc_options};
use crate::convert::{decode, encode};
use crate::cuda::{DeviceBuffer, Module};
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

/// A GPU context for measuring kernels.
pub struct KernelBench {
    gpu: BenchContext,
    arch: String,
    nvrtc: Vec<String>,
}

impl std::fmt::Debug for KernelBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBench")
            .field("arch", &self.arch)
            .finish()
    }
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
        Ok(KernelBench {
            gpu: BenchContext::new(device, false)?,
            arch: arch.to_string(),
            nvrtc: nvrtc_options(arch, include_dirs),
        })
    }

    /// The GPU's name.
    pub fn device_name(&self) -> String {
        self.gpu.device_name()
    }

    fn params(
        &self,
        params: &[BenchParam],
        scratch_words: u32,
        seed: u64,
    ) -> Result<ParamSet, RuntimeError> {
        let mut buffers = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let n = usize::try_from(p.elements)
                .map_err(|_| RuntimeError::Device("a parameter does not fit this host".into()))?;
            let values = if p.written {
                vec![f32::NAN; n]
            } else {
                pseudo_random(n, seed + i as u64)
            };
            buffers.push(self.gpu.upload(p.dtype, &values, "a parameter")?);
        }
        let scratch = DeviceBuffer::zeroed(
            &self.gpu.ctx,
            self.gpu.stream.cu_stream(),
            u64::from(scratch_words.max(1)) * 4,
            "scratch",
        )?;
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
                self.gpu.stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(RuntimeError::driver(format!("launching `{}`", launch.name)))
    }

    /// Compiles `source` (one translation unit) and loads it.
    pub fn load(&self, source: &str) -> Result<Variants, RuntimeError> {
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(RuntimeError::driver("binding the context"))?;
        let (cubin, _log) = compile_named("variants.cu", source, &self.arch, &self.nvrtc)?;
        let module = Module::load(&self.gpu.ctx, &cubin).map_err(|c| {
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
        let copies = copies(self.gpu.l2_bytes, input_bytes);
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
                self.gpu.write(buffer, &nan, "an output's poison")?;
            }
        }
        self.launch(func, launch, &sets[0])?;
        self.gpu.sync(&format!("running `{}`", launch.name))?;
        let mut outputs = Vec::new();
        for (p, buffer) in params.iter().zip(&sets[0].buffers) {
            if p.written {
                let mut host = vec![0u8; (p.elements * p.dtype.size_bytes()) as usize];
                let stream = self.gpu.stream.cu_stream();
                // SAFETY: `host` holds the buffer's bytes and lives until the sync.
                unsafe { drv::memcpy_dtoh_async(&mut host, buffer.ptr(), stream) }
                    .map_err(RuntimeError::driver("reading an output"))?;
                self.gpu.sync("reading an output")?;
                outputs.push(decode(p.dtype, &host));
            }
        }
        let us = self
            .gpu
            .time(timing, |i| self.launch(func, launch, &sets[i % sets.len()]))?;
        Ok(BenchResult { us, outputs })
    }
}
