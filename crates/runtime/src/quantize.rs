//! fp8 weight quantization on the GPU, at load time.
//!
//! Deriving fp8 weights on the host in f32 takes far too long for a
//! 12-billion-parameter model, so [`WeightPlan::load_quantizing`] hands each
//! fp8 weight to the engine as a [`QuantizeJob`] and a [`Quantizer`] runs it:
//! the source's bytes (bf16 or f32) are copied into a device staging buffer,
//! allocated once for the largest job and freed after loading, and the
//! runtime's own kernels (`kernels/quantize.cu`, compiled with NVRTC through
//! the same cache as `kernels.cu`) write the f32 scales or the fp8 values
//! straight into the weight's buffer. The kernels reproduce the host
//! derivation of `fluxc_checkpoint` bit for bit (see the comment at the top
//! of `quantize.cu`), which stays the reference and the fallback
//! ([`LoadOptions::quantize_on_gpu`](crate::LoadOptions)).
//!
//! The launch sequence of a job is computed on the host by [`launches`], a
//! pure function, so it is tested without a GPU.
//!
//! [`WeightPlan::load_quantizing`]: crate::weights::WeightPlan::load_quantizing

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::result as drv;
use cudarc::driver::sys;
use cudarc::driver::CudaContext;
use fluxc_artifact::{ElemType, Fp8Format};
use fluxc_checkpoint::fp8;

use crate::cuda::{DeviceBuffer, Module};
use crate::plan::Param;
use crate::weights::{JobSize, QuantizeJob, QuantizeOutput};
use crate::RuntimeError;

/// The kernels' source.
pub(crate) const SOURCE: &str = include_str!("../kernels/quantize.cu");
/// Its file name, for NVRTC and errors.
pub(crate) const FILE: &str = "quantize.cu";
/// Threads per block: `FLUXC_QUANT_THREADS` in `quantize.cu`, which its
/// block reduction relies on.
const THREADS: u32 = 256;
/// The most blocks a launch asks for; the kernels loop grid-stride.
const MAX_GRID: u64 = 1 << 16;
/// Alignment of the pieces of the staging buffer.
const ALIGN: u64 = 256;

/// Every kernel of `quantize.cu`.
const KERNELS: [&str; 5] = [
    "fluxc_quant_row_amax_bf16",
    "fluxc_quant_row_amax_f32",
    "fluxc_quant_tensor_scale",
    "fluxc_quant_values_bf16",
    "fluxc_quant_values_f32",
];

/// Where a job's pieces lie in the staging buffer (byte offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Staging {
    /// The input.
    pub input: u64,
    /// One f32 amax per row.
    pub amax: u64,
    /// One f32 scale per row (or one).
    pub scales: u64,
    /// Bytes in all.
    pub total: u64,
}

impl Staging {
    /// The layout for a job of `size`.
    pub fn of(size: JobSize) -> Staging {
        let per_row = align(size.rows.saturating_mul(4));
        let amax = align(size.input_bytes);
        let scales = amax.saturating_add(per_row);
        Staging {
            input: 0,
            amax,
            scales,
            total: scales.saturating_add(per_row),
        }
    }
}

fn align(bytes: u64) -> u64 {
    bytes.div_ceil(ALIGN).saturating_mul(ALIGN)
}

/// Bytes of a staging buffer that holds any of the jobs `sizes` (0 when
/// there are none).
pub(crate) fn staging_bytes(sizes: &[JobSize]) -> u64 {
    sizes
        .iter()
        .map(|&s| Staging::of(s).total)
        .max()
        .unwrap_or(0)
}

/// One kernel launch of a job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Launch {
    /// The kernel.
    pub kernel: &'static str,
    /// Blocks (of [`THREADS`] threads).
    pub grid: u32,
    /// Its parameters, in order.
    pub params: Vec<Param>,
}

/// The launches that run `job` with its staging buffer at `staging` and its
/// weight's buffer at `dest`, in order: row amaxes (or per-row scales),
/// then for per-tensor scales one reduction, then for values the
/// quantization.
pub(crate) fn launches(
    job: &QuantizeJob<'_>,
    staging: u64,
    dest: u64,
) -> Result<Vec<Launch>, RuntimeError> {
    let layout = Staging::of(JobSize {
        input_bytes: job.input_bytes(),
        rows: job.rows,
    });
    let suffix = match job.input_dtype {
        ElemType::Bf16 => "bf16",
        ElemType::F32 => "f32",
        other => {
            return Err(RuntimeError::Unsupported(format!(
                "weight `{}`: quantizing {other:?} on the GPU (bf16 and f32 are)",
                job.weight
            )))
        }
    };
    let count = |v: u64| {
        i64::try_from(v).map_err(|_| {
            RuntimeError::Unsupported(format!("weight `{}` is too large to quantize", job.weight))
        })
    };
    let (rows, cols) = (count(job.rows)?, count(job.cols)?);
    // The kernels index elements with `long long`.
    count(job.rows.saturating_mul(job.cols))?;
    let x = Param::Ptr(staging + layout.input);
    let max_finite = Param::F32(fp8::max_finite(job.format));
    let row_amax = |out: u64, as_scale: bool| Launch {
        kernel: pick(
            suffix,
            "fluxc_quant_row_amax_bf16",
            "fluxc_quant_row_amax_f32",
        ),
        grid: grid(job.rows),
        params: vec![
            x,
            Param::Ptr(out),
            Param::I64(rows),
            Param::I64(cols),
            Param::I32(i32::from(as_scale)),
            max_finite,
        ],
    };
    let tensor_scale = |out: u64| Launch {
        kernel: "fluxc_quant_tensor_scale",
        grid: 1,
        params: vec![
            Param::Ptr(staging + layout.amax),
            Param::Ptr(out),
            Param::I64(rows),
            max_finite,
        ],
    };
    let values = |scales: u64| Launch {
        kernel: pick(suffix, "fluxc_quant_values_bf16", "fluxc_quant_values_f32"),
        grid: grid(
            job.rows
                .saturating_mul(job.cols)
                .div_ceil(u64::from(THREADS)),
        ),
        params: vec![
            x,
            Param::Ptr(scales),
            Param::Ptr(dest),
            Param::I64(rows),
            Param::I64(cols),
            Param::I32(i32::from(job.per_row)),
            Param::I32(i32::from(job.format == Fp8Format::E5m2)),
        ],
    };
    let scales = staging + layout.scales;
    Ok(match (job.output, job.per_row) {
        (QuantizeOutput::Scales, true) => vec![row_amax(dest, true)],
        (QuantizeOutput::Scales, false) => {
            vec![row_amax(staging + layout.amax, false), tensor_scale(dest)]
        }
        (QuantizeOutput::Values, true) => vec![row_amax(scales, true), values(scales)],
        (QuantizeOutput::Values, false) => vec![
            row_amax(staging + layout.amax, false),
            tensor_scale(scales),
            values(scales),
        ],
    })
}

/// `bf16` or `f32` by input suffix.
fn pick(suffix: &str, bf16: &'static str, f32: &'static str) -> &'static str {
    if suffix == "bf16" {
        bf16
    } else {
        f32
    }
}

/// Blocks for `work` units (at least one, at most [`MAX_GRID`]).
fn grid(work: u64) -> u32 {
    work.clamp(1, MAX_GRID) as u32
}

/// The quantization kernels, loaded, and the staging buffer: what the
/// engine holds while it loads weights, and drops after.
pub(crate) struct Quantizer {
    functions: BTreeMap<&'static str, sys::CUfunction>,
    staging: DeviceBuffer,
    _module: Module,
}

impl Quantizer {
    /// Resolves the kernels of `module` (compiled from [`SOURCE`]) and
    /// allocates a staging buffer of `staging_bytes`, ordered on `stream`.
    pub fn new(
        ctx: &Arc<CudaContext>,
        module: Module,
        stream: sys::CUstream,
        staging_bytes: u64,
    ) -> Result<Self, RuntimeError> {
        let mut functions = BTreeMap::new();
        for name in KERNELS {
            let func = module.function(name).map_err(|code| {
                RuntimeError::driver(format!("looking up kernel `{name}` of {FILE}"))(
                    drv::DriverError(code),
                )
            })?;
            functions.insert(name, func);
        }
        let staging = DeviceBuffer::zeroed(
            ctx,
            stream,
            staging_bytes,
            "the fp8 quantization staging buffer",
        )?;
        Ok(Quantizer {
            functions,
            staging,
            _module: module,
        })
    }

    /// Runs `job` into the weight region `weights` on `stream`, and waits
    /// for it (the job's input lives only until this returns).
    pub fn run(
        &self,
        job: &QuantizeJob<'_>,
        weights: &DeviceBuffer,
        stream: sys::CUstream,
    ) -> Result<(), RuntimeError> {
        let what = format!("quantizing weight `{}` to fp8 on the GPU", job.weight);
        let region = weights.bytes() as u64;
        if job
            .offset
            .checked_add(job.bytes)
            .is_none_or(|end| end > region)
        {
            return Err(RuntimeError::Device(format!(
                "weight `{}` reaches past the weight region ({} + {} > {region} bytes)",
                job.weight, job.offset, job.bytes
            )));
        }
        let layout = Staging::of(JobSize {
            input_bytes: job.input_bytes(),
            rows: job.rows,
        });
        if layout.total > self.staging.bytes() as u64 {
            return Err(RuntimeError::Device(format!(
                "weight `{}` needs {} bytes of staging, {} were allocated",
                job.weight,
                layout.total,
                self.staging.bytes()
            )));
        }
        let mut at = self.staging.ptr() + layout.input;
        for part in &job.input {
            // SAFETY: the parts fit the staging buffer (checked above); they
            // live until the synchronize below.
            unsafe { drv::memcpy_htod_async(at, part, stream) }
                .map_err(RuntimeError::driver(what.clone()))?;
            at += part.len() as u64;
        }
        for launch in launches(job, self.staging.ptr(), weights.ptr() + job.offset)? {
            self.launch(&launch, stream)
                .map_err(RuntimeError::driver(format!("{what} ({})", launch.kernel)))?;
        }
        // SAFETY: `stream` is a live stream of the context.
        unsafe { drv::stream::synchronize(stream) }.map_err(RuntimeError::driver(what))
    }

    /// Enqueues one launch on `stream`.
    fn launch(&self, launch: &Launch, stream: sys::CUstream) -> Result<(), drv::DriverError> {
        let func = *self
            .functions
            .get(launch.kernel)
            .ok_or(drv::DriverError(sys::CUresult::CUDA_ERROR_NOT_FOUND))?;
        let mut values = launch.params.clone();
        let mut ptrs: Vec<*mut c_void> = values.iter_mut().map(Param::as_kernel_param).collect();
        // SAFETY: `func` belongs to the loaded module and the parameters
        // match its signature in quantize.cu (`launches` builds them for
        // it); they point into `values`, alive for the call; every address
        // lies in the staging buffer or the weight region.
        unsafe {
            drv::launch_kernel(
                func,
                (launch.grid, 1, 1),
                (THREADS, 1, 1),
                0,
                stream,
                &mut ptrs,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile_named, nvrtc_options};
    use crate::LoadOptions;

    fn job<'a>(
        input: Vec<&'a [u8]>,
        dtype: ElemType,
        output: QuantizeOutput,
        per_row: bool,
    ) -> QuantizeJob<'a> {
        QuantizeJob {
            weight: "w",
            offset: 512,
            bytes: 0,
            input,
            input_dtype: dtype,
            rows: 3,
            cols: 4,
            per_row,
            format: Fp8Format::E4m3,
            output,
        }
    }

    #[test]
    fn staging_is_aligned_and_sized_for_the_largest_job() {
        let s = Staging::of(JobSize {
            input_bytes: 24,
            rows: 3,
        });
        assert_eq!(
            s,
            Staging {
                input: 0,
                amax: 256,
                scales: 512,
                total: 768
            }
        );
        let sizes = [
            JobSize {
                input_bytes: 1000,
                rows: 1,
            },
            JobSize {
                input_bytes: 24,
                rows: 3,
            },
        ];
        assert_eq!(staging_bytes(&sizes), 1024 + 256 + 256);
        assert_eq!(staging_bytes(&[]), 0);
    }

    #[test]
    fn launch_sequences_follow_output_and_granularity() {
        let data = [0u8; 24];
        let (staging, dest) = (0x1000, 0x9000);
        let names = |j: &QuantizeJob<'_>| -> Vec<&str> {
            launches(j, staging, dest)
                .unwrap()
                .iter()
                .map(|l| l.kernel)
                .collect()
        };
        let bf16 = |output, per_row| job(vec![&data[..]], ElemType::Bf16, output, per_row);
        assert_eq!(
            names(&bf16(QuantizeOutput::Scales, true)),
            ["fluxc_quant_row_amax_bf16"]
        );
        assert_eq!(
            names(&bf16(QuantizeOutput::Scales, false)),
            ["fluxc_quant_row_amax_bf16", "fluxc_quant_tensor_scale"]
        );
        assert_eq!(
            names(&bf16(QuantizeOutput::Values, true)),
            ["fluxc_quant_row_amax_bf16", "fluxc_quant_values_bf16"]
        );
        let f32_data = [0u8; 48];
        let j = job(
            vec![&f32_data[..]],
            ElemType::F32,
            QuantizeOutput::Values,
            false,
        );
        assert_eq!(
            names(&j),
            [
                "fluxc_quant_row_amax_f32",
                "fluxc_quant_tensor_scale",
                "fluxc_quant_values_f32"
            ]
        );
        // Per-tensor values: amaxes after the 48 input bytes (aligned to
        // 256), the scale after them, the values into the weight.
        let l = launches(&j, staging, dest).unwrap();
        let max = Param::F32(448.0);
        assert_eq!(
            l[0].params,
            vec![
                Param::Ptr(0x1000),
                Param::Ptr(0x1000 + 256),
                Param::I64(3),
                Param::I64(4),
                Param::I32(0),
                max
            ]
        );
        assert_eq!(l[0].grid, 3);
        assert_eq!(
            l[1].params,
            vec![
                Param::Ptr(0x1000 + 256),
                Param::Ptr(0x1000 + 512),
                Param::I64(3),
                max
            ]
        );
        assert_eq!(l[1].grid, 1);
        assert_eq!(
            l[2].params,
            vec![
                Param::Ptr(0x1000),
                Param::Ptr(0x1000 + 512),
                Param::Ptr(0x9000),
                Param::I64(3),
                Param::I64(4),
                Param::I32(0),
                Param::I32(0)
            ]
        );
        // Per-row scales go straight into the weight's buffer.
        let l = launches(&bf16(QuantizeOutput::Scales, true), staging, dest).unwrap();
        assert_eq!(l[0].params[1], Param::Ptr(0x9000));
        assert_eq!(l[0].params[4], Param::I32(1));
        let mut e5 = bf16(QuantizeOutput::Values, true);
        e5.format = Fp8Format::E5m2;
        let l = launches(&e5, staging, dest).unwrap();
        assert_eq!(l[0].params[5], Param::F32(57344.0));
        assert_eq!(l[1].params[6], Param::I32(1));
        let bad = job(vec![&data[..]], ElemType::F16, QuantizeOutput::Values, true);
        assert!(launches(&bad, staging, dest)
            .unwrap_err()
            .to_string()
            .contains("weight `w`"));
    }

    #[test]
    fn grids_are_clamped() {
        assert_eq!(grid(0), 1);
        assert_eq!(grid(5), 5);
        assert_eq!(grid(u64::MAX), 1 << 16);
    }

    /// quantize.cu compiles for sm_90a and defines every kernel the engine
    /// looks up. Runs where libnvrtc loads and the CUDA headers are found
    /// (set `LD_LIBRARY_PATH` and `FLUXC_CUDA_INCLUDE`); otherwise says why
    /// it skips.
    #[test]
    fn quantize_cu_compiles_where_nvrtc_is_available() {
        // SAFETY: only tries to dlopen libnvrtc.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            println!(
                "SKIP quantize_cu_compiles_where_nvrtc_is_available: libnvrtc cannot be loaded"
            );
            return;
        }
        let include = LoadOptions::default().cuda_include_dirs;
        if !include.iter().any(|d| d.join("cuda_fp8.h").is_file()) {
            println!(
                "SKIP quantize_cu_compiles_where_nvrtc_is_available: no cuda_fp8.h in {include:?}"
            );
            return;
        }
        let options = nvrtc_options("sm_90a", &include);
        let (cubin, log) = compile_named(FILE, SOURCE, "sm_90a", &options).unwrap();
        assert_eq!(&cubin[..4], b"\x7fELF", "a CUBIN is an ELF image");
        assert!(log.is_empty(), "NVRTC warnings:\n{log}");
        // The symbol table names every kernel (extern "C": unmangled).
        for name in KERNELS {
            let found = cubin.windows(name.len()).any(|w| w == name.as_bytes());
            assert!(found, "{name} is not in the CUBIN");
        }
    }
}
