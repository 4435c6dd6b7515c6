//! A cache of the quantized fp8 weights next to the artifact
//! (`<artifact>/weights.fp8.safetensors`), so later loads skip the
//! quantization.
//!
//! `LoadOptions::save_quantized` writes it after the weights are loaded:
//! every weight the device quantizes (`WeightPlan::fp8_weights`: the fp8
//! values and their f32 scales), read back from the weight region, stamped
//! with what it was derived from ([`stamp`]). `LoadOptions::
//! use_quantized_cache` (on by default) makes a load take those weights
//! from the cache when its stamp matches; a stale cache is ignored with a
//! message saying why, and a corrupt one (unreadable header, a tensor
//! missing or of another shape, a checksum that does not match) with a
//! warning: the weights are then quantized as without a cache, never taken
//! from a file that does not check out ([`file`](mod@file)).
//!
//! Everything here runs on the host; the engine does the device reads and
//! uploads.

pub mod file;
pub mod stamp;

use std::path::Path;

use fluxc_artifact::CheckpointLayout;
use fluxc_checkpoint::Checkpoint;

pub use file::{open, path_in, write, CachedWeights, Lookup, Tensor};
pub use stamp::{FileId, Stamp, FORMAT};

use crate::weights::Fp8Weight;
use crate::Artifact;

/// The cache's file name in the artifact directory.
pub const FILE: &str = "weights.fp8.safetensors";

/// The stamp of `weights` of `artifact`, read in `layout` from
/// `checkpoint` and quantized by the kernels of source `kernels`. Fails
/// when a checkpoint file cannot be inspected.
pub fn stamp_of(
    artifact: &Artifact,
    layout: &CheckpointLayout,
    weights: &[Fp8Weight<'_>],
    checkpoint: &Checkpoint,
    kernels: &str,
) -> std::io::Result<Stamp> {
    let mut files: Vec<&Path> = checkpoint.files();
    if checkpoint.is_sharded() {
        files.push(checkpoint.location());
    }
    Ok(Stamp {
        format: FORMAT.to_string(),
        artifact_format: artifact.manifest.format_version,
        artifact_content_hash: artifact.manifest.content_hash.clone(),
        weights_hash: stamp::weights_hash(layout, weights, kernels),
        checkpoint: files
            .into_iter()
            .map(FileId::of)
            .collect::<std::io::Result<_>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use fluxc_artifact::{
        Buffer, ElemType, Fp8Format, Manifest, Region, Schedule, WeightEntry, WeightSource,
    };
    use safetensors::tensor::TensorView;

    use crate::weights::{select_layout, WeightPlan};

    /// An artifact of one per-row fp8 weight and its scales, quantized from
    /// `w` [4, 8], and a bias read as stored.
    fn artifact(dir: &Path) -> Artifact {
        let of = || Box::new(WeightSource::tensor("w"));
        let weights = [
            (
                "w8",
                WeightSource::Fp8Quantize {
                    of: of(),
                    format: Fp8Format::E4m3,
                    per_row: true,
                },
            ),
            (
                "sw",
                WeightSource::Fp8Scale {
                    of: of(),
                    format: Fp8Format::E4m3,
                    per_row: true,
                },
            ),
            ("b", WeightSource::tensor("b")),
        ];
        Artifact {
            dir: dir.to_path_buf(),
            manifest: Manifest {
                format_version: fluxc_artifact::FORMAT_VERSION,
                compiler: "test".into(),
                model_name: "toy".into(),
                content_hash: "h".into(),
                arch: "sm_90a".into(),
                layouts: vec![CheckpointLayout {
                    name: "diffusers".into(),
                    strip_prefixes: vec![],
                }],
                weights: weights
                    .into_iter()
                    .enumerate()
                    .map(|(i, (name, source))| WeightEntry {
                        name: name.into(),
                        buffer: i as u32,
                        sources: BTreeMap::from([("diffusers".to_string(), source)]),
                    })
                    .collect(),
            },
            schedule: Schedule {
                arena_bytes: 0,
                weight_bytes: 768,
                scratch_bytes: 0,
                gemm_workspace_bytes: 0,
                buffers: vec![
                    Buffer::new(0, "w8", ElemType::F8e4m3, vec![4, 8], Region::Weights, 0),
                    Buffer::new(1, "sw", ElemType::F32, vec![4, 1], Region::Weights, 256),
                    Buffer::new(2, "b", ElemType::F32, vec![4], Region::Weights, 512),
                ],
                inputs: vec![],
                outputs: vec![],
                steps: vec![],
            },
            kernels: String::new(),
        }
    }

    fn write_checkpoint(path: &Path, scale: f32) {
        let w: Vec<u8> = (0..32)
            .flat_map(|i| ((i as f32 - 9.5) * scale).to_le_bytes())
            .collect();
        let b: Vec<u8> = (0..4).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let views = BTreeMap::from([
            (
                "w",
                TensorView::new(safetensors::Dtype::F32, vec![4, 8], &w).unwrap(),
            ),
            (
                "b",
                TensorView::new(safetensors::Dtype::F32, vec![4], &b).unwrap(),
            ),
        ]);
        safetensors::serialize_to_file(&views, None, path).unwrap();
    }

    /// The host-derived weight region and the stamp of the fp8 weights.
    fn derive(art: &Artifact, ckpt_path: &Path) -> (Vec<u8>, Stamp, Vec<Tensor>) {
        let mut ckpt = Checkpoint::open(ckpt_path).unwrap();
        let layout = select_layout(&art.manifest, &mut ckpt).unwrap();
        let plan = WeightPlan::new(&art.manifest, &art.schedule, "diffusers", &ckpt).unwrap();
        let mut region = vec![0u8; 768];
        plan.load(
            &ckpt,
            |o, d| {
                region[o as usize..o as usize + d.len()].copy_from_slice(d);
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        let fp8 = plan.fp8_weights(&ckpt).unwrap();
        let layout = &art.manifest.layouts[layout];
        let stamp = stamp_of(art, layout, &fp8, &ckpt, "kernels").unwrap();
        (region, stamp, Tensor::of(&fp8))
    }

    #[test]
    fn a_saved_cache_reloads_the_same_bytes_until_the_checkpoint_changes() {
        let dir = tempfile::tempdir().unwrap();
        let art = artifact(dir.path());
        let ckpt = dir.path().join("model.safetensors");
        write_checkpoint(&ckpt, 0.25);
        let (region, stamp, tensors) = derive(&art, &ckpt);
        assert_eq!(
            tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["w8", "sw"],
            "the bias is not quantized, so not cached"
        );
        assert_eq!(stamp.checkpoint.len(), 1);
        assert_eq!(
            stamp.checkpoint[0].bytes,
            std::fs::metadata(&ckpt).unwrap().len()
        );
        let path = path_in(&art.dir);
        let offsets = [0usize, 256];
        write(&path, &stamp, &tensors, |i, buf| {
            let o = offsets[i];
            buf.extend_from_slice(&region[o..o + tensors[i].bytes as usize]);
            Ok(())
        })
        .unwrap();

        // Loaded again: the same stamp, the same bytes.
        let (_, again, _) = derive(&art, &ckpt);
        assert_eq!(again, stamp);
        let Lookup::Valid(cached) = open(&path, &again, &tensors) else {
            panic!("the cache should be valid")
        };
        assert_eq!(cached.bytes("w8").unwrap(), &region[..32]);
        assert_eq!(cached.bytes("sw").unwrap(), &region[256..272]);

        // Other values of the same size, written later: stale.
        write_checkpoint(&ckpt, 0.5);
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&ckpt)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let (_, changed, _) = derive(&art, &ckpt);
        match open(&path, &changed, &tensors) {
            Lookup::Stale(why) => assert!(why.contains("was modified"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
