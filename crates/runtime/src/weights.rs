//! Filling the weight region from a checkpoint, on the host.
//!
//! [`select_layout`] picks the first of the manifest's checkpoint layouts
//! whose every source tensor the checkpoint holds (after stripping that
//! layout's prefixes). [`WeightPlan::new`] then checks every weight against
//! the checkpoint's headers (stored dtype, derived shape, element count of
//! its buffer) before any data is read, and [`WeightPlan::load`] streams the
//! weights one by one to a caller-given sink: derivations that are plain row
//! ranges (or stacks of them) of tensors stored in the buffer's own dtype go
//! through as the stored bytes, everything else is derived in f32 with
//! `fluxc-checkpoint` and converted. Only one weight is held on the host at
//! a time.
//!
//! fp8 weights (`Fp8Quantize` values in an fp8 buffer of the same format,
//! `Fp8Scale` scales in an f32 buffer) are far too slow to derive on the
//! host for a 12-billion-parameter model. [`WeightPlan::load_quantizing`]
//! hands each of them to a second sink as a [`QuantizeJob`] instead: the
//! bytes of the source being quantized (its stored bf16 or f32 parts,
//! which are only sliced out of the mapped files, or else that source
//! derived in f32 on the host), its shape as `[rows, cols]` with `cols` the
//! last axis, and where the result goes. The engine runs those jobs on the
//! GPU (`quantize.rs`); [`WeightPlan::load`] keeps the host derivation,
//! which is the reference the GPU kernels match bit for bit.

use std::time::Instant;

use fluxc_artifact::{
    Buffer, CheckpointLayout, ElemType, Fp8Format, Manifest, Schedule, WeightSource,
};
use fluxc_checkpoint::{describe, Checkpoint, StoredBytes};

use crate::convert::{encode, same_encoding};
use crate::RuntimeError;

/// Stored tensors listed per layout in a [`RuntimeError::NoMatchingLayout`].
const MISSING_SHOWN: usize = 5;

/// Picks the first layout of `manifest` whose every weight source reads only
/// tensors `checkpoint` holds, and leaves `checkpoint` with that layout's
/// prefixes stripped. Returns the layout's index in `manifest.layouts`.
pub fn select_layout(
    manifest: &Manifest,
    checkpoint: &mut Checkpoint,
) -> Result<usize, RuntimeError> {
    let mut details = Vec::new();
    for (i, layout) in manifest.layouts.iter().enumerate() {
        checkpoint.strip_prefixes(&layout.strip_prefixes);
        match missing_for(manifest, layout, checkpoint) {
            Ok(()) => return Ok(i),
            Err(why) => details.push(format!("  {}: {why}", layout.name)),
        }
    }
    checkpoint.strip_prefixes::<&str>(&[]);
    if details.is_empty() {
        details.push("  (the manifest lists no checkpoint layouts)".into());
    }
    Err(RuntimeError::NoMatchingLayout {
        checkpoint: checkpoint.location().to_path_buf(),
        details: details.join("\n"),
    })
}

/// `Ok` when `checkpoint` (prefixes stripped) holds every tensor `layout`
/// needs; otherwise what is missing, in words.
fn missing_for(
    manifest: &Manifest,
    layout: &CheckpointLayout,
    checkpoint: &Checkpoint,
) -> Result<(), String> {
    let mut missing: Vec<String> = Vec::new();
    let mut total = 0usize;
    for w in &manifest.weights {
        let Some(source) = w.sources.get(&layout.name) else {
            return Err(format!("weight `{}` has no source for this layout", w.name));
        };
        for name in checkpoint.missing_tensors(source) {
            if !missing.contains(&name) {
                total += 1;
                if missing.len() < MISSING_SHOWN {
                    missing.push(name);
                }
            }
        }
    }
    if total == 0 {
        return Ok(());
    }
    let shown: Vec<String> = missing.iter().map(|n| format!("`{n}`")).collect();
    let more = if total > shown.len() {
        format!(" and {} more", total - shown.len())
    } else {
        String::new()
    };
    Err(format!(
        "{total} tensor(s) missing: {}{more}",
        shown.join(", ")
    ))
}

/// One weight, checked against the checkpoint.
#[derive(Debug, Clone)]
struct Planned {
    name: String,
    source: WeightSource,
    buffer: Buffer,
}

/// Every weight of an artifact, checked against a checkpoint and ready to
/// stream into the weight region.
#[derive(Debug, Clone)]
pub struct WeightPlan {
    layout: String,
    weights: Vec<Planned>,
}

/// Progress of [`WeightPlan::load`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Weights uploaded so far.
    pub done: usize,
    /// Weights in all.
    pub total: usize,
    /// Bytes uploaded so far.
    pub bytes_done: u64,
    /// Bytes in all.
    pub bytes_total: u64,
    /// Seconds since loading started.
    pub seconds: f64,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gb = |b: u64| b as f64 / 1e9;
        write!(
            f,
            "weights {}/{}, {:.2}/{:.2} GB, {:.1} s",
            self.done,
            self.total,
            gb(self.bytes_done),
            gb(self.bytes_total),
            self.seconds
        )
    }
}

/// What a [`QuantizeJob`] writes into its weight's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizeOutput {
    /// The fp8 values (`Fp8Quantize`): `rows × cols` bytes.
    Values,
    /// The f32 scales (`Fp8Scale`): `rows` values per row, else one.
    Scales,
}

/// One fp8 weight to compute on the device: quantize (or take the scales
/// of) `input`, a row-major `[rows, cols]` tensor, into the weight region.
#[derive(Debug, Clone)]
pub struct QuantizeJob<'a> {
    /// The weight.
    pub weight: &'a str,
    /// Its buffer's byte offset in the weight region.
    pub offset: u64,
    /// Its buffer's size in bytes.
    pub bytes: u64,
    /// The source's elements, row-major, in consecutive pieces (the stored
    /// parts of a stack, or one host-derived f32 array).
    pub input: Vec<&'a [u8]>,
    /// The input's element type: bf16 or f32.
    pub input_dtype: ElemType,
    /// Rows: every axis but the last, flattened.
    pub rows: u64,
    /// Columns: the last axis (a scale covers one row when `per_row`).
    pub cols: u64,
    /// One scale per row instead of one for the tensor.
    pub per_row: bool,
    /// The fp8 format.
    pub format: Fp8Format,
    /// Values or scales.
    pub output: QuantizeOutput,
}

impl QuantizeJob<'_> {
    /// Bytes of the input.
    pub fn input_bytes(&self) -> u64 {
        self.input.iter().map(|p| p.len() as u64).sum()
    }
}

/// The sizes of a [`QuantizeJob`], known from headers alone: enough to
/// size a device staging buffer before loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSize {
    /// Bytes of the input.
    pub input_bytes: u64,
    /// Rows of the input.
    pub rows: u64,
}

/// Where [`WeightPlan::load_quantizing`] sends device jobs.
type QuantizeSink<'f> = dyn FnMut(&QuantizeJob<'_>) -> Result<(), RuntimeError> + 'f;

/// Where [`WeightPlan::load_cached`] takes the bytes of a device-quantized
/// weight from, by weight name.
type CachedSink<'f, 'm> = dyn FnMut(&str) -> Result<&'m [u8], RuntimeError> + 'f;

/// How `load_with` fills the weights the device quantizes.
enum Fp8Fill<'a, 'f, 'm> {
    /// Derive them on the host (the reference).
    Host,
    /// Hand them to the device as [`QuantizeJob`]s.
    Device(&'a mut QuantizeSink<'f>),
    /// Upload bytes quantized earlier.
    Cached(&'a mut CachedSink<'f, 'm>),
}

/// A weight the device quantizes (see [`QuantizeJob`]): what a cache of
/// the quantized weights holds and is stamped with.
#[derive(Debug, Clone, Copy)]
pub struct Fp8Weight<'p> {
    /// The weight.
    pub name: &'p str,
    /// Its derivation in the plan's layout.
    pub source: &'p WeightSource,
    /// Its buffer in the weight region (fp8 values or f32 scales).
    pub buffer: &'p Buffer,
}

/// A job's input as stored in the checkpoint: the parts of a stack, in
/// order, all of one type the kernels read.
struct StoredInput<'c> {
    parts: Vec<&'c [u8]>,
    dtype: ElemType,
}

/// A weight the device quantizes: what `load_quantizing` needs of it,
/// before its input bytes are taken.
struct JobSpec<'w, 'c> {
    of: &'w WeightSource,
    format: Fp8Format,
    per_row: bool,
    output: QuantizeOutput,
    rows: u64,
    cols: u64,
    /// The stored parts, or `None` to derive `of` on the host in f32.
    stored: Option<StoredInput<'c>>,
}

impl JobSpec<'_, '_> {
    fn input_bytes(&self) -> u64 {
        match &self.stored {
            Some(stored) => stored.parts.iter().map(|p| p.len() as u64).sum(),
            None => self.rows * self.cols * ElemType::F32.size_bytes(),
        }
    }
}

/// The buffer type that holds the values of `format`.
fn fp8_type(format: Fp8Format) -> ElemType {
    match format {
        Fp8Format::E4m3 => ElemType::F8e4m3,
        Fp8Format::E5m2 => ElemType::F8e5m2,
    }
}

/// The buffer type that holds `stored` as is, if the kernels read it.
fn kernel_input_type(stored: fluxc_checkpoint::Dtype) -> Option<ElemType> {
    match stored {
        fluxc_checkpoint::Dtype::BF16 => Some(ElemType::Bf16),
        fluxc_checkpoint::Dtype::F32 => Some(ElemType::F32),
        _ => None,
    }
}

impl WeightPlan {
    /// Checks every weight of `manifest` against `checkpoint` (whose
    /// prefixes [`select_layout`] stripped) for layout `layout`: its source
    /// tensors are present with a convertible dtype, its derivation applies,
    /// and it derives exactly as many elements as its buffer holds. Reads
    /// headers only.
    pub fn new(
        manifest: &Manifest,
        schedule: &Schedule,
        layout: &str,
        checkpoint: &Checkpoint,
    ) -> Result<WeightPlan, RuntimeError> {
        let mut weights = Vec::with_capacity(manifest.weights.len());
        for w in &manifest.weights {
            let source = w.sources.get(layout).ok_or_else(|| {
                RuntimeError::Checkpoint(fluxc_checkpoint::CheckpointError::UnmappedWeight {
                    weight: w.name.clone(),
                    layout: layout.to_string(),
                })
            })?;
            let buffer = schedule
                .buffers
                .get(w.buffer as usize)
                .ok_or(RuntimeError::NoSuchBuffer(w.buffer))?;
            let shape = checkpoint.derived_shape(&w.name, source)?;
            // Stored dtypes are checked against the derived shape itself:
            // only the element count has to match the buffer.
            checkpoint.check(&w.name, source, &shape)?;
            let found = shape.iter().map(|&d| d as u64).product::<u64>();
            if found != buffer.elements() {
                return Err(RuntimeError::WeightSize {
                    weight: w.name.clone(),
                    buffer: buffer.name.clone(),
                    expected: buffer.elements(),
                    found,
                    shape,
                    derivation: describe(source),
                });
            }
            weights.push(Planned {
                name: w.name.clone(),
                source: source.clone(),
                buffer: buffer.clone(),
            });
        }
        Ok(WeightPlan {
            layout: layout.to_string(),
            weights,
        })
    }

    /// The layout the plan reads.
    pub fn layout(&self) -> &str {
        &self.layout
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether there are no weights.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Bytes of all weight buffers.
    pub fn total_bytes(&self) -> u64 {
        self.weights.iter().map(|w| w.buffer.bytes).sum()
    }

    /// Streams every weight to `upload(byte offset in the weight region,
    /// bytes)` (possibly several calls per weight, at increasing offsets),
    /// calling `progress` after each weight. fp8 weights are derived on the
    /// host (the reference; see [`load_quantizing`](Self::load_quantizing)).
    pub fn load(
        &self,
        checkpoint: &Checkpoint,
        upload: impl FnMut(u64, &[u8]) -> Result<(), RuntimeError>,
        progress: impl FnMut(&Progress),
    ) -> Result<(), RuntimeError> {
        self.load_with(checkpoint, upload, Fp8Fill::Host, progress)
    }

    /// [`load`](Self::load), except that every fp8 weight the device can
    /// compute (see [`QuantizeJob`]) goes to `quantize` instead of being
    /// derived on the host. `progress` still follows every weight.
    pub fn load_quantizing(
        &self,
        checkpoint: &Checkpoint,
        upload: impl FnMut(u64, &[u8]) -> Result<(), RuntimeError>,
        mut quantize: impl FnMut(&QuantizeJob<'_>) -> Result<(), RuntimeError>,
        progress: impl FnMut(&Progress),
    ) -> Result<(), RuntimeError> {
        self.load_with(checkpoint, upload, Fp8Fill::Device(&mut quantize), progress)
    }

    /// [`load`](Self::load), except that every weight
    /// [`load_quantizing`](Self::load_quantizing) would hand to the device
    /// is uploaded as the bytes `cached(weight name)` returns (quantized
    /// earlier; they must fill its buffer exactly), so neither its source
    /// is read nor anything quantized.
    pub fn load_cached<'m>(
        &self,
        checkpoint: &Checkpoint,
        mut upload: impl FnMut(u64, &[u8]) -> Result<(), RuntimeError>,
        mut cached: impl FnMut(&str) -> Result<&'m [u8], RuntimeError>,
        progress: impl FnMut(&Progress),
    ) -> Result<(), RuntimeError> {
        self.load_with(
            checkpoint,
            &mut upload,
            Fp8Fill::Cached(&mut cached),
            progress,
        )
    }

    /// The weights the device quantizes (those `load_quantizing`
    /// (Self::load_quantizing) hands out as jobs), in load order. Reads
    /// headers only.
    pub fn fp8_weights(&self, checkpoint: &Checkpoint) -> Result<Vec<Fp8Weight<'_>>, RuntimeError> {
        let mut out = Vec::new();
        for w in &self.weights {
            if job_spec(checkpoint, w)?.is_some() {
                out.push(Fp8Weight {
                    name: &w.name,
                    source: &w.source,
                    buffer: &w.buffer,
                });
            }
        }
        Ok(out)
    }

    /// The sizes of the jobs [`load_quantizing`](Self::load_quantizing)
    /// hands out, in order. Reads headers only (stored parts are sliced out
    /// of the mapped files, not read).
    pub fn quantize_job_sizes(
        &self,
        checkpoint: &Checkpoint,
    ) -> Result<Vec<JobSize>, RuntimeError> {
        let mut sizes = Vec::new();
        for w in &self.weights {
            if let Some(spec) = job_spec(checkpoint, w)? {
                sizes.push(JobSize {
                    input_bytes: spec.input_bytes(),
                    rows: spec.rows,
                });
            }
        }
        Ok(sizes)
    }

    fn load_with(
        &self,
        checkpoint: &Checkpoint,
        mut upload: impl FnMut(u64, &[u8]) -> Result<(), RuntimeError>,
        mut fp8: Fp8Fill<'_, '_, '_>,
        mut progress: impl FnMut(&Progress),
    ) -> Result<(), RuntimeError> {
        let start = Instant::now();
        let mut p = Progress {
            done: 0,
            total: self.weights.len(),
            bytes_done: 0,
            bytes_total: self.total_bytes(),
            seconds: 0.0,
        };
        for w in &self.weights {
            let spec = match fp8 {
                Fp8Fill::Host => None,
                _ => job_spec(checkpoint, w)?,
            };
            match (spec, &mut fp8) {
                (Some(spec), Fp8Fill::Device(quantize)) => run_job(checkpoint, w, spec, *quantize)?,
                (Some(_), Fp8Fill::Cached(cached)) => {
                    let bytes = cached(&w.name)?;
                    check_filled(w, bytes.len() as u64)?;
                    upload(w.buffer.offset, bytes)?;
                }
                _ => load_on_host(checkpoint, w, &mut upload)?,
            }
            p.done += 1;
            p.bytes_done += w.buffer.bytes;
            p.seconds = start.elapsed().as_secs_f64();
            progress(&p);
        }
        Ok(())
    }
}

/// Loads `w` through `upload`: its stored bytes when they are in the
/// buffer's encoding, else derived in f32 on the host and converted.
fn load_on_host(
    checkpoint: &Checkpoint,
    w: &Planned,
    upload: &mut impl FnMut(u64, &[u8]) -> Result<(), RuntimeError>,
) -> Result<(), RuntimeError> {
    let buffer = &w.buffer;
    match stored_parts(checkpoint, &w.name, &w.source)? {
        Some(parts) if parts.iter().all(|p| same_encoding(p.dtype, buffer.dtype)) => {
            let mut offset = buffer.offset;
            for part in parts {
                upload(offset, part.bytes)?;
                offset += part.bytes.len() as u64;
            }
            check_filled(w, offset - buffer.offset)
        }
        _ => {
            let tensor = checkpoint.derive(&w.name, &w.source)?;
            let bytes = encode(buffer.dtype, &tensor.data);
            check_filled(w, bytes.len() as u64)?;
            upload(buffer.offset, &bytes)
        }
    }
}

/// The device job of `w`, when it is an fp8 weight the kernels compute:
/// `Fp8Quantize` into a buffer of its own format, or `Fp8Scale` into an f32
/// buffer, of a non-empty source. Reads headers only. Everything else
/// (fp8 derivations nested in others, mismatched buffer types) stays on
/// the host.
fn job_spec<'w, 'c>(
    checkpoint: &'c Checkpoint,
    w: &'w Planned,
) -> Result<Option<JobSpec<'w, 'c>>, RuntimeError> {
    let (of, format, per_row, output) = match &w.source {
        WeightSource::Fp8Quantize {
            of,
            format,
            per_row,
        } if w.buffer.dtype == fp8_type(*format) => (of, *format, *per_row, QuantizeOutput::Values),
        WeightSource::Fp8Scale {
            of,
            format,
            per_row,
        } if w.buffer.dtype == ElemType::F32 => (of, *format, *per_row, QuantizeOutput::Scales),
        _ => return Ok(None),
    };
    let shape = checkpoint.derived_shape(&w.name, of)?;
    // As the host derivation: rows of the last axis (a scalar is one row of one).
    let cols = *shape.last().unwrap_or(&1) as u64;
    let elements = shape.iter().map(|&d| d as u64).product::<u64>();
    if cols == 0 || elements == 0 {
        return Ok(None);
    }
    let rows = elements / cols;
    let spec = JobSpec {
        of,
        format,
        per_row,
        output,
        rows,
        cols,
        stored: stored_input(checkpoint, &w.name, of)?,
    };
    let expected = match output {
        QuantizeOutput::Values => elements,
        QuantizeOutput::Scales if per_row => rows * ElemType::F32.size_bytes(),
        QuantizeOutput::Scales => ElemType::F32.size_bytes(),
    };
    check_filled(w, expected)?;
    Ok(Some(spec))
}

/// The stored parts of `of` and their type, when every part is stored as
/// one type the kernels read (bf16 or f32); `None` otherwise.
fn stored_input<'c>(
    checkpoint: &'c Checkpoint,
    weight: &str,
    of: &WeightSource,
) -> Result<Option<StoredInput<'c>>, RuntimeError> {
    let Some(parts) = stored_parts(checkpoint, weight, of)? else {
        return Ok(None);
    };
    let Some(first) = parts.first().and_then(|p| kernel_input_type(p.dtype)) else {
        return Ok(None);
    };
    if parts
        .iter()
        .any(|p| kernel_input_type(p.dtype) != Some(first))
    {
        return Ok(None);
    }
    Ok(Some(StoredInput {
        parts: parts.iter().map(|p| p.bytes).collect(),
        dtype: first,
    }))
}

/// Hands `w`'s job to `quantize`, deriving its input on the host in f32
/// when it is not stored as bf16 or f32 parts.
fn run_job(
    checkpoint: &Checkpoint,
    w: &Planned,
    spec: JobSpec<'_, '_>,
    quantize: &mut QuantizeSink<'_>,
) -> Result<(), RuntimeError> {
    let derived: Vec<u8>;
    let (input, input_dtype) = match spec.stored {
        Some(stored) => (stored.parts, stored.dtype),
        None => {
            derived = encode(ElemType::F32, &checkpoint.derive(&w.name, spec.of)?.data);
            (vec![&derived[..]], ElemType::F32)
        }
    };
    let job = QuantizeJob {
        weight: &w.name,
        offset: w.buffer.offset,
        bytes: w.buffer.bytes,
        input,
        input_dtype,
        rows: spec.rows,
        cols: spec.cols,
        per_row: spec.per_row,
        format: spec.format,
        output: spec.output,
    };
    let expected = spec.rows * spec.cols * input_dtype.size_bytes();
    if job.input_bytes() != expected {
        return Err(RuntimeError::WeightSize {
            weight: w.name.clone(),
            buffer: w.buffer.name.clone(),
            expected: spec.rows * spec.cols,
            found: job.input_bytes() / input_dtype.size_bytes(),
            shape: vec![spec.rows as usize, spec.cols as usize],
            derivation: describe(spec.of),
        });
    }
    quantize(&job)
}

/// Fails unless `bytes` is exactly the size of `w`'s buffer.
fn check_filled(w: &Planned, bytes: u64) -> Result<(), RuntimeError> {
    if bytes == w.buffer.bytes {
        return Ok(());
    }
    Err(RuntimeError::WeightSize {
        weight: w.name.clone(),
        buffer: w.buffer.name.clone(),
        expected: w.buffer.elements(),
        found: bytes / w.buffer.dtype.size_bytes(),
        shape: Vec::new(),
        derivation: describe(&w.source),
    })
}

/// The stored bytes of what `source` derives, when it is a row range of a
/// stored tensor or a stack of such ranges; `None` otherwise.
fn stored_parts<'c>(
    checkpoint: &'c Checkpoint,
    weight: &str,
    source: &WeightSource,
) -> Result<Option<Vec<StoredBytes<'c>>>, RuntimeError> {
    match source {
        WeightSource::Concat { parts } => {
            let mut all = Vec::new();
            for part in parts {
                match stored_parts(checkpoint, weight, part)? {
                    Some(bytes) => all.extend(bytes),
                    None => return Ok(None),
                }
            }
            Ok(Some(all))
        }
        _ => Ok(checkpoint.stored_bytes(weight, source)?.map(|b| vec![b])),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use fluxc_artifact::{Region, WeightEntry};
    use fluxc_checkpoint::fp8;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    use super::*;
    use crate::convert::decode;

    fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<f32>)]) {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, d, _, v)| match d {
                Dtype::BF16 => encode(ElemType::Bf16, v),
                _ => encode(ElemType::F32, v),
            })
            .collect();
        let views: BTreeMap<String, TensorView> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, d, s, _), b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(&views, None, path).unwrap();
    }

    fn buffer(id: u32, dtype: ElemType, shape: Vec<u64>, offset: u64) -> Buffer {
        Buffer::new(id, format!("w{id}"), dtype, shape, Region::Weights, offset)
    }

    fn entry(name: &str, buffer: u32, sources: &[(&str, WeightSource)]) -> WeightEntry {
        WeightEntry {
            name: name.into(),
            buffer,
            sources: sources
                .iter()
                .map(|(l, s)| (l.to_string(), s.clone()))
                .collect(),
        }
    }

    fn layouts() -> Vec<CheckpointLayout> {
        vec![
            CheckpointLayout {
                name: "diffusers".into(),
                strip_prefixes: vec![],
            },
            CheckpointLayout {
                name: "bfl".into(),
                strip_prefixes: vec!["model.diffusion_model.".into()],
            },
        ]
    }

    fn manifest(weights: Vec<WeightEntry>) -> Manifest {
        Manifest {
            format_version: fluxc_artifact::FORMAT_VERSION,
            compiler: "test".into(),
            model_name: "toy".into(),
            content_hash: String::new(),
            arch: "sm_90a".into(),
            layouts: layouts(),
            weights,
        }
    }

    /// Weight `qkv` is `to_q` and `to_k` stacked (diffusers) or rows of a
    /// fused tensor (bfl); weight `m` swaps halves in bfl.
    fn toy() -> (Manifest, Schedule) {
        let qkv = entry(
            "qkv",
            0,
            &[
                (
                    "diffusers",
                    WeightSource::Concat {
                        parts: vec![WeightSource::tensor("to_q"), WeightSource::tensor("to_k")],
                    },
                ),
                ("bfl", WeightSource::tensor("qkv").rows(0, 4)),
            ],
        );
        let m = entry(
            "m",
            1,
            &[
                ("diffusers", WeightSource::tensor("m")),
                ("bfl", WeightSource::tensor("mod").swap_halves()),
            ],
        );
        let schedule = Schedule {
            arena_bytes: 0,
            weight_bytes: 512,
            scratch_bytes: 0,
            gemm_workspace_bytes: 0,
            buffers: vec![
                buffer(0, ElemType::Bf16, vec![4, 2], 0),
                buffer(1, ElemType::F32, vec![4], 256),
            ],
            inputs: vec![],
            outputs: vec![],
            steps: vec![],
        };
        (manifest(vec![qkv, m]), schedule)
    }

    /// Loads every weight into a host copy of the weight region.
    fn load_region(plan: &WeightPlan, ckpt: &Checkpoint, bytes: usize) -> Vec<u8> {
        let mut region = vec![0u8; bytes];
        let mut calls = 0;
        plan.load(
            ckpt,
            |offset, data| {
                let o = offset as usize;
                region[o..o + data.len()].copy_from_slice(data);
                Ok(())
            },
            |_| calls += 1,
        )
        .unwrap();
        assert_eq!(calls, plan.len());
        region
    }

    #[test]
    fn picks_the_first_layout_the_checkpoint_satisfies() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (manifest, schedule) = toy();
        let diffusers = tmp.path().join("d.safetensors");
        write(
            &diffusers,
            &[
                ("to_q", Dtype::BF16, vec![2, 2], vec![1., 2., 3., 4.]),
                ("to_k", Dtype::F32, vec![2, 2], vec![5., 6., 7., 8.]),
                ("m", Dtype::F32, vec![4], vec![1., 2., 3., 4.]),
            ],
        );
        let mut ckpt = Checkpoint::open(&diffusers).unwrap();
        assert_eq!(select_layout(&manifest, &mut ckpt).unwrap(), 0);
        let plan = WeightPlan::new(&manifest, &schedule, "diffusers", &ckpt).unwrap();
        assert_eq!(plan.total_bytes(), 16 + 16);
        let region = load_region(&plan, &ckpt, 512);
        assert_eq!(
            decode(ElemType::Bf16, &region[..16]),
            vec![1., 2., 3., 4., 5., 6., 7., 8.]
        );
        assert_eq!(
            decode(ElemType::F32, &region[256..272]),
            vec![1., 2., 3., 4.]
        );

        let bfl = tmp.path().join("b.safetensors");
        write(
            &bfl,
            &[
                (
                    "model.diffusion_model.qkv",
                    Dtype::BF16,
                    vec![6, 2],
                    (0..12).map(|i| i as f32).collect(),
                ),
                (
                    "model.diffusion_model.mod",
                    Dtype::BF16,
                    vec![4],
                    vec![1., 2., 3., 4.],
                ),
            ],
        );
        let mut ckpt = Checkpoint::open(&bfl).unwrap();
        assert_eq!(select_layout(&manifest, &mut ckpt).unwrap(), 1);
        let plan = WeightPlan::new(&manifest, &schedule, "bfl", &ckpt).unwrap();
        let region = load_region(&plan, &ckpt, 512);
        assert_eq!(
            decode(ElemType::Bf16, &region[..16]),
            (0..8).map(|i| i as f32).collect::<Vec<_>>()
        );
        assert_eq!(
            decode(ElemType::F32, &region[256..272]),
            vec![3., 4., 1., 2.]
        );
    }

    #[test]
    fn no_matching_layout_names_missing_tensors() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (manifest, _) = toy();
        let path = tmp.path().join("x.safetensors");
        write(&path, &[("to_q", Dtype::F32, vec![2, 2], vec![0.; 4])]);
        let mut ckpt = Checkpoint::open(&path).unwrap();
        let err = select_layout(&manifest, &mut ckpt).unwrap_err();
        let msg = err.to_string();
        for needle in [
            "x.safetensors",
            "diffusers: 2 tensor(s) missing",
            "`to_k`",
            "`m`",
            "bfl:",
            "`qkv`",
            "`mod`",
        ] {
            assert!(msg.contains(needle), "{msg}\nlacks {needle}");
        }
    }

    #[test]
    fn wrong_element_counts_are_named() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (manifest, schedule) = toy();
        let path = tmp.path().join("d.safetensors");
        write(
            &path,
            &[
                ("to_q", Dtype::F32, vec![2, 2], vec![0.; 4]),
                ("to_k", Dtype::F32, vec![2, 2], vec![0.; 4]),
                ("m", Dtype::F32, vec![5], vec![0.; 5]),
            ],
        );
        let ckpt = Checkpoint::open(&path).unwrap();
        let err = WeightPlan::new(&manifest, &schedule, "diffusers", &ckpt).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RuntimeError::WeightSize { .. }), "{msg}");
        assert!(
            msg.contains("`m`") && msg.contains("5 elements") && msg.contains("holds 4"),
            "{msg}"
        );
    }

    /// A job's input, owned, for comparing after `load_quantizing`.
    #[derive(Debug, Clone, PartialEq)]
    struct SeenJob {
        weight: String,
        offset: u64,
        bytes: u64,
        pieces: usize,
        input: Vec<u8>,
        input_dtype: ElemType,
        rows: u64,
        cols: u64,
        per_row: bool,
        format: Fp8Format,
        output: QuantizeOutput,
    }

    impl SeenJob {
        fn of(job: &QuantizeJob<'_>) -> Self {
            SeenJob {
                weight: job.weight.to_string(),
                offset: job.offset,
                bytes: job.bytes,
                pieces: job.input.len(),
                input: job.input.concat(),
                input_dtype: job.input_dtype,
                rows: job.rows,
                cols: job.cols,
                per_row: job.per_row,
                format: job.format,
                output: job.output,
            }
        }
    }

    const W: [f32; 12] = [
        0.5, -1.25, 3.0, 0.01, // row 0
        100.0, -7.0, 0.2, 64.0, // row 1
        0.0, 0.0, 0.0, 0.0, // row 2: the floor scale
    ];
    const F: [f32; 8] = [1.0e-3, -2.5, 0.7, 3.3, -440.0, 0.0, 1.0e5, 12.0];

    fn quant(of: WeightSource, format: Fp8Format, per_row: bool) -> WeightSource {
        WeightSource::Fp8Quantize {
            of: Box::new(of),
            format,
            per_row,
        }
    }

    fn scale(of: WeightSource, per_row: bool) -> WeightSource {
        WeightSource::Fp8Scale {
            of: Box::new(of),
            format: Fp8Format::E4m3,
            per_row,
        }
    }

    /// fp8 weights of every kind the device takes, one it does not (a
    /// format that is not its buffer's), and a plain weight.
    fn fp8_toy(dir: &Path) -> (Manifest, Schedule, Checkpoint) {
        let path = dir.join("fp8.safetensors");
        let swap: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
        write(
            &path,
            &[
                ("w_bf16", Dtype::BF16, vec![3, 4], W.to_vec()),
                ("w_f32", Dtype::F32, vec![2, 4], F.to_vec()),
                ("part_a", Dtype::BF16, vec![1, 4], W[..4].to_vec()),
                ("part_b", Dtype::BF16, vec![2, 4], W[4..].to_vec()),
                ("w_swap", Dtype::BF16, vec![2, 4], swap),
            ],
        );
        let t = WeightSource::tensor;
        let cat = || WeightSource::Concat {
            parts: vec![t("part_a"), t("part_b")],
        };
        let e4 = Fp8Format::E4m3;
        let weights: Vec<(&str, WeightSource, ElemType, Vec<u64>)> = vec![
            (
                "q_rows",
                quant(t("w_bf16"), e4, true),
                ElemType::F8e4m3,
                vec![3, 4],
            ),
            (
                "s_rows",
                scale(t("w_bf16"), true),
                ElemType::F32,
                vec![3, 1],
            ),
            (
                "q_tensor",
                quant(cat(), e4, false),
                ElemType::F8e4m3,
                vec![3, 4],
            ),
            ("s_tensor", scale(cat(), false), ElemType::F32, vec![1]),
            (
                "q_f32",
                quant(t("w_f32"), e4, true),
                ElemType::F8e4m3,
                vec![2, 4],
            ),
            (
                "q_swap",
                quant(t("w_swap").swap_halves(), e4, true),
                ElemType::F8e4m3,
                vec![2, 4],
            ),
            (
                "q_mismatch",
                quant(t("w_f32"), Fp8Format::E5m2, true),
                ElemType::F8e4m3,
                vec![2, 4],
            ),
            ("plain", t("w_f32"), ElemType::F32, vec![2, 4]),
            (
                "q_e5",
                quant(t("w_f32"), Fp8Format::E5m2, false),
                ElemType::F8e5m2,
                vec![2, 4],
            ),
        ];
        let mut buffers = Vec::new();
        let mut entries = Vec::new();
        for (i, (name, source, dtype, shape)) in weights.into_iter().enumerate() {
            buffers.push(buffer(i as u32, dtype, shape, 256 * i as u64));
            entries.push(entry(name, i as u32, &[("diffusers", source)]));
        }
        let schedule = Schedule {
            arena_bytes: 0,
            weight_bytes: 256 * buffers.len() as u64,
            scratch_bytes: 0,
            gemm_workspace_bytes: 0,
            buffers,
            inputs: vec![],
            outputs: vec![],
            steps: vec![],
        };
        let mut ckpt = Checkpoint::open(&path).unwrap();
        let manifest = manifest(entries);
        assert_eq!(select_layout(&manifest, &mut ckpt).unwrap(), 0);
        (manifest, schedule, ckpt)
    }

    /// Runs `load_quantizing`, returning the jobs, the offsets uploaded to,
    /// and the number of progress reports.
    fn collect_jobs(plan: &WeightPlan, ckpt: &Checkpoint) -> (Vec<SeenJob>, Vec<u64>, usize) {
        let (mut jobs, mut uploads, mut reports) = (Vec::new(), Vec::new(), 0);
        plan.load_quantizing(
            ckpt,
            |offset, _| {
                uploads.push(offset);
                Ok(())
            },
            |job| {
                jobs.push(SeenJob::of(job));
                Ok(())
            },
            |_| reports += 1,
        )
        .unwrap();
        (jobs, uploads, reports)
    }

    #[test]
    fn fp8_weights_become_device_jobs() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (manifest, schedule, ckpt) = fp8_toy(tmp.path());
        let plan = WeightPlan::new(&manifest, &schedule, "diffusers", &ckpt).unwrap();
        let (jobs, uploads, reports) = collect_jobs(&plan, &ckpt);
        assert_eq!(reports, plan.len(), "progress follows every weight");
        let names: Vec<&str> = jobs.iter().map(|j| j.weight.as_str()).collect();
        assert_eq!(
            names,
            ["q_rows", "s_rows", "q_tensor", "s_tensor", "q_f32", "q_swap", "q_e5"]
        );
        // The mismatched format and the plain weight go through `upload`.
        assert_eq!(uploads, vec![6 * 256, 7 * 256]);

        let bf16 = |v: &[f32]| encode(ElemType::Bf16, v);
        let q_rows = &jobs[0];
        assert_eq!(
            q_rows,
            &SeenJob {
                weight: "q_rows".into(),
                offset: 0,
                bytes: 12,
                pieces: 1,
                input: bf16(&W),
                input_dtype: ElemType::Bf16,
                rows: 3,
                cols: 4,
                per_row: true,
                format: Fp8Format::E4m3,
                output: QuantizeOutput::Values,
            }
        );
        let s_rows = &jobs[1];
        assert_eq!((s_rows.offset, s_rows.bytes), (256, 12));
        assert_eq!(s_rows.output, QuantizeOutput::Scales);
        assert_eq!(
            s_rows.input,
            bf16(&W),
            "scales read the source, not themselves"
        );
        // A stack of stored parts: the parts in order, not copied together.
        let q_tensor = &jobs[2];
        assert_eq!((q_tensor.pieces, q_tensor.rows, q_tensor.cols), (2, 3, 4));
        assert_eq!(q_tensor.input, bf16(&W));
        assert!(!q_tensor.per_row);
        assert_eq!((jobs[3].offset, jobs[3].bytes), (768, 4));
        // Stored f32 goes as f32.
        assert_eq!(jobs[4].input_dtype, ElemType::F32);
        assert_eq!(jobs[4].input, encode(ElemType::F32, &F));
        // A derivation that is no stored range is derived on the host, in f32.
        let swapped: Vec<f32> = [4, 5, 6, 7, 0, 1, 2, 3]
            .iter()
            .map(|&i| i as f32 - 3.5)
            .collect();
        assert_eq!(jobs[5].input_dtype, ElemType::F32);
        assert_eq!(jobs[5].input, encode(ElemType::F32, &swapped));
        assert_eq!((jobs[6].format, jobs[6].offset), (Fp8Format::E5m2, 8 * 256));

        // The sizes known before loading match the jobs.
        let sizes = plan.quantize_job_sizes(&ckpt).unwrap();
        let expected: Vec<JobSize> = jobs
            .iter()
            .map(|j| JobSize {
                input_bytes: j.input.len() as u64,
                rows: j.rows,
            })
            .collect();
        assert_eq!(sizes, expected);
    }

    /// What quantize.cu computes for a job, on the host: row amaxes with
    /// `max`, the tensor's amax as the max of those, the scale as
    /// `max(amax, 1e-12) / max_finite`, values as the fp8 of `x / scale`.
    fn kernels_on_host(job: &SeenJob) -> Vec<u8> {
        let x = decode(job.input_dtype, &job.input);
        let cols = job.cols as usize;
        let max = fp8::max_finite(job.format);
        let row_amax: Vec<f32> = x
            .chunks(cols)
            .map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs())))
            .collect();
        let scale_of = |amax: f32| amax.max(1e-12) / max;
        let scales: Vec<f32> = if job.per_row {
            row_amax.iter().map(|&a| scale_of(a)).collect()
        } else {
            vec![scale_of(row_amax.iter().fold(0f32, |m, &a| m.max(a)))]
        };
        match job.output {
            QuantizeOutput::Scales => encode(ElemType::F32, &scales),
            QuantizeOutput::Values => x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let s = scales[if job.per_row { i / cols } else { 0 }];
                    fp8::encode(job.format, v / s)
                })
                .collect(),
        }
    }

    #[test]
    fn device_jobs_reproduce_the_host_derivation() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (manifest, schedule, ckpt) = fp8_toy(tmp.path());
        let plan = WeightPlan::new(&manifest, &schedule, "diffusers", &ckpt).unwrap();
        let bytes = schedule.weight_bytes as usize;
        let reference = load_region(&plan, &ckpt, bytes);

        let mut region = vec![0u8; bytes];
        let mut jobs = Vec::new();
        plan.load_quantizing(
            &ckpt,
            |offset, data| {
                let o = offset as usize;
                region[o..o + data.len()].copy_from_slice(data);
                Ok(())
            },
            |job| {
                jobs.push(SeenJob::of(job));
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        for job in &jobs {
            let out = kernels_on_host(job);
            assert_eq!(out.len() as u64, job.bytes, "{}", job.weight);
            let o = job.offset as usize;
            region[o..o + out.len()].copy_from_slice(&out);
        }
        for (i, b) in schedule.buffers.iter().enumerate() {
            let range = b.offset as usize..(b.offset + b.bytes) as usize;
            assert_eq!(
                region[range.clone()],
                reference[range],
                "weight {}",
                manifest.weights[i].name
            );
        }
        // The floor scale of the all-zero row; each row's largest |x| is 448.
        assert_eq!(
            decode(ElemType::F32, &reference[256 + 8..256 + 12]),
            vec![1e-12 / 448.0]
        );
        for row in reference[4 * 256..4 * 256 + 8].chunks(4) {
            assert!(row.contains(&0x7e), "{row:?}");
        }
    }

    #[test]
    fn plain_load_derives_fp8_weights_on_the_host() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (manifest, schedule, ckpt) = fp8_toy(tmp.path());
        let plan = WeightPlan::new(&manifest, &schedule, "diffusers", &ckpt).unwrap();
        let mut uploads = 0;
        plan.load(
            &ckpt,
            |_, _| {
                uploads += 1;
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(uploads, plan.len());
    }

    #[test]
    fn cached_loads_upload_the_cached_bytes_of_exactly_the_device_jobs() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (manifest, schedule, ckpt) = fp8_toy(tmp.path());
        let plan = WeightPlan::new(&manifest, &schedule, "diffusers", &ckpt).unwrap();
        let (jobs, _, _) = collect_jobs(&plan, &ckpt);
        let fp8 = plan.fp8_weights(&ckpt).unwrap();
        let names: Vec<&str> = fp8.iter().map(|w| w.name).collect();
        let job_names: Vec<&str> = jobs.iter().map(|j| j.weight.as_str()).collect();
        assert_eq!(
            names, job_names,
            "the cache holds what the device quantizes"
        );
        assert!(fp8
            .iter()
            .zip(&jobs)
            .all(|(w, j)| w.buffer.offset == j.offset));

        // Each cached weight is its buffer's bytes of a pattern; the rest
        // comes from the checkpoint as always.
        let pattern: Vec<Vec<u8>> = fp8
            .iter()
            .map(|w| vec![w.buffer.id as u8 + 1; w.buffer.bytes as usize])
            .collect();
        let reference = load_region(&plan, &ckpt, schedule.weight_bytes as usize);
        let mut region = vec![0u8; schedule.weight_bytes as usize];
        let mut asked = Vec::new();
        plan.load_cached(
            &ckpt,
            |offset, data| {
                let o = offset as usize;
                region[o..o + data.len()].copy_from_slice(data);
                Ok(())
            },
            |name| {
                asked.push(name.to_string());
                let i = names.iter().position(|n| *n == name).unwrap();
                Ok(&pattern[i][..])
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(asked, job_names);
        for b in &schedule.buffers {
            let range = b.offset as usize..(b.offset + b.bytes) as usize;
            match names
                .iter()
                .position(|n| manifest.weights[b.id as usize].name == *n)
            {
                Some(i) => assert_eq!(region[range], pattern[i][..]),
                None => assert_eq!(region[range.clone()], reference[range]),
            }
        }

        // Bytes that do not fill the buffer are refused, naming the weight;
        // the sink's own errors come through as they are.
        let short = plan.load_cached(&ckpt, |_, _| Ok(()), |_| Ok(&[1u8][..]), |_| {});
        assert!(short.unwrap_err().to_string().contains("q_rows"));
        let failed = plan.load_cached(
            &ckpt,
            |_, _| Ok(()),
            |_| {
                Err(RuntimeError::QuantizedCache {
                    path: "c".into(),
                    reason: "corrupt".into(),
                })
            },
            |_| {},
        );
        assert!(matches!(failed, Err(RuntimeError::QuantizedCache { .. })));
    }
}
