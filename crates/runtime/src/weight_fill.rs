//! Filling the weight region while an engine loads: every weight from the
//! checkpoint, the fp8 ones quantized on the GPU (`quantize.rs`), on the
//! host, or taken from the quantized-weights cache (`fp8_cache`) when its
//! stamp matches; then, when asked, writing that cache.
//!
//! A cache that turns out corrupt while loading (a tensor whose checksum
//! does not match) is abandoned with a warning and the weights are loaded
//! again, quantized: a corrupt cache costs time, never wrong weights.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::result as drv;
use cudarc::driver::{CudaContext, CudaStream};
use fluxc_checkpoint::Checkpoint;

use crate::artifact::Artifact;
use crate::cuda::DeviceBuffer;
use crate::fp8_cache::{self, Lookup, Stamp, Tensor};
use crate::quantize::{self, Quantizer};
use crate::weights::{Progress, WeightPlan};
use crate::{LoadOptions, RuntimeError};

/// Seconds between weight-loading progress lines.
const PROGRESS_EVERY_S: f64 = 2.0;

/// Where an engine's fp8 weights came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fp8Origin {
    /// The artifact has no weights the device quantizes.
    NoFp8,
    /// Quantized on the GPU while loading.
    QuantizedOnGpu,
    /// Derived on the host (`LoadOptions::quantize_on_gpu = false`).
    DerivedOnHost,
    /// Read from this cache of quantized weights: nothing was quantized.
    Cache(PathBuf),
}

/// What [`fill`] works with.
pub(crate) struct Fill<'a> {
    pub ctx: &'a Arc<CudaContext>,
    pub stream: &'a Arc<CudaStream>,
    pub weights: &'a DeviceBuffer,
    pub artifact: &'a Artifact,
    pub layout_index: usize,
    pub plan: &'a WeightPlan,
    pub checkpoint: &'a Checkpoint,
    pub options: &'a LoadOptions,
    /// Bytes of the quantization staging buffer.
    pub staging_bytes: u64,
}

/// Prints a progress line (when `LoadOptions::progress`).
fn say(options: &LoadOptions, msg: &str) {
    if options.progress {
        eprintln!("fluxc-runtime: {msg}");
    }
}

/// Fills the weight region (see the module docs) and, with
/// `LoadOptions::save_quantized`, writes the cache.
pub(crate) fn fill(f: &Fill<'_>) -> Result<Fp8Origin, RuntimeError> {
    let fp8 = f.plan.fp8_weights(f.checkpoint)?;
    if fp8.is_empty() {
        upload(f, None)?;
        return Ok(Fp8Origin::NoFp8);
    }
    let path = fp8_cache::path_in(&f.artifact.dir);
    let tensors = Tensor::of(&fp8);
    let stamp = if f.options.use_quantized_cache || f.options.save_quantized {
        let layout = &f.artifact.manifest.layouts[f.layout_index];
        match fp8_cache::stamp_of(f.artifact, layout, &fp8, f.checkpoint, quantize::SOURCE) {
            Ok(stamp) => Some(stamp),
            Err(e) => {
                eprintln!(
                    "fluxc-runtime: warning: cannot identify the checkpoint's files ({e}); the \
                     quantized weights cache `{}` is not used",
                    path.display()
                );
                None
            }
        }
    } else {
        None
    };
    let mut origin = None;
    if let (true, Some(stamp)) = (f.options.use_quantized_cache, &stamp) {
        origin = from_cache(f, &path, stamp, &tensors)?;
    }
    let origin = match origin {
        Some(origin) => origin,
        None => quantize(f, fp8.len())?,
    };
    if let (true, Some(stamp)) = (f.options.save_quantized, &stamp) {
        if matches!(origin, Fp8Origin::Cache(_)) {
            say(f.options, &format!("`{}` is up to date", path.display()));
        } else {
            save(f, &path, stamp, &tensors)?;
        }
    }
    Ok(origin)
}

/// Loads the weights with the fp8 ones from the cache at `path`, if it is
/// there, matches `stamp` and checks out; `None` (after saying why) when
/// the weights must be quantized instead.
fn from_cache(
    f: &Fill<'_>,
    path: &std::path::Path,
    stamp: &Stamp,
    tensors: &[Tensor],
) -> Result<Option<Fp8Origin>, RuntimeError> {
    let started = Instant::now();
    let cached = match fp8_cache::open(path, stamp, tensors) {
        Lookup::Valid(cached) => cached,
        Lookup::Missing => return Ok(None),
        Lookup::Stale(why) => {
            eprintln!(
                "fluxc-runtime: ignoring the quantized weights cache `{}`: it is stale: {why}{}",
                path.display(),
                if f.options.save_quantized {
                    " (rewriting it)"
                } else {
                    " (--save-quantized rewrites it)"
                }
            );
            return Ok(None);
        }
        Lookup::Corrupt(why) => {
            eprintln!(
                "fluxc-runtime: warning: ignoring the quantized weights cache `{}`: {why}; \
                 quantizing instead",
                path.display()
            );
            return Ok(None);
        }
    };
    let loaded = upload(f, Some(&|name: &str| cached.bytes(name)));
    match loaded {
        Ok(()) => {
            say(
                f.options,
                &format!(
                    "{} fp8 weight(s) from `{}` in {:.1} s (quantization skipped)",
                    tensors.len(),
                    path.display(),
                    started.elapsed().as_secs_f64()
                ),
            );
            Ok(Some(Fp8Origin::Cache(path.to_path_buf())))
        }
        Err(e @ RuntimeError::QuantizedCache { .. }) => {
            eprintln!("fluxc-runtime: warning: {e}; loading the weights again, quantizing");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Loads the weights quantizing the fp8 ones, on the GPU or (without
/// `quantize_on_gpu`) on the host.
fn quantize(f: &Fill<'_>, count: usize) -> Result<Fp8Origin, RuntimeError> {
    if !f.options.quantize_on_gpu {
        upload(f, None)?;
        return Ok(Fp8Origin::DerivedOnHost);
    }
    let say_fn = |msg: &str| say(f.options, msg);
    let module = crate::engine::load_module(
        f.ctx,
        quantize::FILE,
        quantize::SOURCE,
        &f.artifact.manifest.arch,
        f.options,
        &say_fn,
    )?;
    say(
        f.options,
        &format!(
            "quantizing {count} fp8 weight(s) on the GPU ({:.3} GB staging)",
            f.staging_bytes as f64 / 1e9
        ),
    );
    let quantizer = Quantizer::new(f.ctx, module, f.stream.cu_stream(), f.staging_bytes)?;
    upload_quantizing(f, &quantizer)?;
    Ok(Fp8Origin::QuantizedOnGpu)
}

/// A sink for [`WeightPlan`] loads: copies bytes to `offset` in the weight
/// region and waits.
fn copier<'a>(f: &'a Fill<'_>) -> impl FnMut(u64, &[u8]) -> Result<(), RuntimeError> + 'a {
    let region = f.weights.bytes() as u64;
    move |offset: u64, bytes: &[u8]| {
        if offset + bytes.len() as u64 > region {
            return Err(RuntimeError::Device(format!(
                "a weight reaches past the weight region ({} + {} > {region} bytes)",
                offset,
                bytes.len()
            )));
        }
        // SAFETY: the destination lies inside the weight region (checked
        // above); `bytes` lives until the synchronize below.
        unsafe { drv::memcpy_htod_async(f.weights.ptr() + offset, bytes, f.stream.cu_stream()) }
            .map_err(RuntimeError::driver("copying weights to the GPU"))?;
        f.stream
            .synchronize()
            .map_err(RuntimeError::driver("copying weights to the GPU"))
    }
}

/// A progress printer for [`WeightPlan`] loads.
fn reporter(options: &LoadOptions) -> impl FnMut(&Progress) + '_ {
    let mut last_print = Instant::now();
    move |p: &Progress| {
        let last = p.done == p.total;
        if options.progress && (last || last_print.elapsed().as_secs_f64() >= PROGRESS_EVERY_S) {
            eprintln!("fluxc-runtime: {p}");
            last_print = Instant::now();
        }
    }
}

/// Where cached loads take a quantized weight's bytes from, by name.
type CachedBytes<'c, 'm> = &'c dyn Fn(&str) -> Result<&'m [u8], RuntimeError>;

/// Streams the weights in: fp8 weights from `cached` when given, else
/// derived on the host.
fn upload(f: &Fill<'_>, cached: Option<CachedBytes<'_, '_>>) -> Result<(), RuntimeError> {
    match cached {
        Some(cached) => f
            .plan
            .load_cached(f.checkpoint, copier(f), cached, reporter(f.options)),
        None => f.plan.load(f.checkpoint, copier(f), reporter(f.options)),
    }
}

/// Streams the weights in, fp8 weights quantized on the GPU.
fn upload_quantizing(f: &Fill<'_>, quantizer: &Quantizer) -> Result<(), RuntimeError> {
    f.plan.load_quantizing(
        f.checkpoint,
        copier(f),
        |job| quantizer.run(job, f.weights, f.stream.cu_stream()),
        reporter(f.options),
    )
}

/// Writes the cache at `path` from the weight region.
fn save(
    f: &Fill<'_>,
    path: &std::path::Path,
    stamp: &Stamp,
    tensors: &[Tensor],
) -> Result<(), RuntimeError> {
    let started = Instant::now();
    let fp8 = f.plan.fp8_weights(f.checkpoint)?;
    fp8_cache::write(path, stamp, tensors, |i, buf| {
        let buffer = fp8[i].buffer;
        let bytes = usize::try_from(buffer.bytes).map_err(|_| {
            RuntimeError::Device(format!("weight `{}` does not fit this host", fp8[i].name))
        })?;
        buf.resize(bytes, 0);
        let what = format!("reading weight `{}` back from the GPU", fp8[i].name);
        // SAFETY: the buffer lies inside the weight region (validated
        // schedule); `buf` holds its bytes and lives until the sync.
        unsafe {
            drv::memcpy_dtoh_async(
                &mut buf[..],
                f.weights.ptr() + buffer.offset,
                f.stream.cu_stream(),
            )
        }
        .map_err(RuntimeError::driver(what.clone()))?;
        f.stream.synchronize().map_err(RuntimeError::driver(what))
    })?;
    let gb = tensors.iter().map(|t| t.bytes).sum::<u64>() as f64 / 1e9;
    say(
        f.options,
        &format!(
            "wrote {} quantized fp8 weight(s) ({gb:.2} GB) to `{}` in {:.1} s",
            tensors.len(),
            path.display(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}
