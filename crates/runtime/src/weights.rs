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

use std::time::Instant;

use fluxc_artifact::{Buffer, CheckpointLayout, Manifest, Schedule, WeightSource};
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
    /// calling `progress` after each weight.
    pub fn load(
        &self,
        checkpoint: &Checkpoint,
        mut upload: impl FnMut(u64, &[u8]) -> Result<(), RuntimeError>,
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
            let buffer = &w.buffer;
            match stored_parts(checkpoint, &w.name, &w.source)? {
                Some(parts) if parts.iter().all(|p| same_encoding(p.dtype, buffer.dtype)) => {
                    let mut offset = buffer.offset;
                    for part in parts {
                        upload(offset, part.bytes)?;
                        offset += part.bytes.len() as u64;
                    }
                    check_filled(w, offset - buffer.offset)?;
                }
                _ => {
                    let tensor = checkpoint.derive(&w.name, &w.source)?;
                    let bytes = encode(buffer.dtype, &tensor.data);
                    check_filled(w, bytes.len() as u64)?;
                    upload(buffer.offset, &bytes)?;
                }
            }
            p.done += 1;
            p.bytes_done += buffer.bytes;
            p.seconds = start.elapsed().as_secs_f64();
            progress(&p);
        }
        Ok(())
    }
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

    use fluxc_artifact::{ElemType, Region, WeightEntry};
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
        let bytes = shape.iter().product::<u64>() * dtype.size_bytes();
        Buffer {
            id,
            name: format!("w{id}"),
            dtype,
            shape,
            region: Region::Weights,
            offset,
            bytes,
        }
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
}
