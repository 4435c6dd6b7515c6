//! What a cache of quantized weights was derived from, and whether it still
//! matches.
//!
//! A [`Stamp`] has three parts:
//!
//! - the cache format ([`FORMAT`]) and the artifact format version;
//! - the *weights hash*: SHA-256 over the checkpoint layout and, for every
//!   device-quantized weight, its name, derivation and buffer (dtype, shape,
//!   offset, size), plus the runtime's quantization kernels. It changes
//!   whenever the artifact would quantize other values into other places,
//!   but not when `fluxc tune` rewrites GEMM algorithms (which changes the
//!   artifact's content hash, recorded for information only);
//! - the *checkpoint identity*: every file read (each safetensors file, and
//!   the index of a sharded checkpoint) by canonical path, size in bytes
//!   and modification time in nanoseconds. Moving, copying, touching or
//!   rewriting a file makes the cache stale, which costs one quantization;
//!   hashing the headers instead would miss a fine-tuned checkpoint with
//!   the same tensor names and shapes, and hashing the data would cost as
//!   much as quantizing.

use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use fluxc_artifact::{hash_parts, CheckpointLayout};

use crate::weights::Fp8Weight;

/// The format of the cache file; bumped on every incompatible change.
pub const FORMAT: &str = "fluxc-fp8-weights/1";

/// One file of the checkpoint the weights were quantized from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// Canonical path.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub modified_ns: u128,
}

impl FileId {
    /// The identity of the file at `path` now.
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let canonical = path.canonicalize()?;
        let meta = std::fs::metadata(&canonical)?;
        let modified_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(FileId {
            path: canonical.display().to_string(),
            bytes: meta.len(),
            modified_ns,
        })
    }
}

/// What a cache of quantized weights was derived from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// [`FORMAT`] of the writer.
    pub format: String,
    /// The artifact's format version.
    pub artifact_format: u32,
    /// The artifact's content hash (for information: not compared).
    pub artifact_content_hash: String,
    /// SHA-256 of the layout, the quantized weights and the kernels.
    pub weights_hash: String,
    /// The checkpoint's files.
    pub checkpoint: Vec<FileId>,
}

/// The hashed description of one quantized weight.
#[derive(Serialize)]
struct WeightIdentity<'p> {
    name: &'p str,
    source: &'p fluxc_artifact::WeightSource,
    buffer: &'p fluxc_artifact::Buffer,
}

/// The weights hash of `weights` read in `layout`, quantized by kernels of
/// source `kernels`.
pub fn weights_hash(layout: &CheckpointLayout, weights: &[Fp8Weight<'_>], kernels: &str) -> String {
    let identity: Vec<WeightIdentity<'_>> = weights
        .iter()
        .map(|w| WeightIdentity {
            name: w.name,
            source: w.source,
            buffer: w.buffer,
        })
        .collect();
    hash_parts([
        FORMAT.as_bytes(),
        &serde_json::to_vec(layout).unwrap_or_default(),
        &serde_json::to_vec(&identity).unwrap_or_default(),
        kernels.as_bytes(),
    ])
}

impl Stamp {
    /// Why a cache stamped `found` cannot stand in for weights stamped
    /// `self`, in words; `None` when it can.
    pub fn mismatch(&self, found: &Stamp) -> Option<String> {
        if found.format != self.format {
            return Some(format!(
                "it has format `{}`, this runtime writes `{}`",
                found.format, self.format
            ));
        }
        if found.artifact_format != self.artifact_format {
            return Some(format!(
                "it was written for artifact format {}, this artifact is format {}",
                found.artifact_format, self.artifact_format
            ));
        }
        if found.weights_hash != self.weights_hash {
            return Some(
                "the artifact's fp8 weights (their derivations, buffers or the quantization \
                 kernels) changed since it was written"
                    .into(),
            );
        }
        checkpoint_mismatch(&self.checkpoint, &found.checkpoint)
    }
}

/// How the checkpoint's files differ from those a cache was quantized from.
fn checkpoint_mismatch(now: &[FileId], then: &[FileId]) -> Option<String> {
    for file in now {
        let Some(old) = then.iter().find(|o| o.path == file.path) else {
            return Some(format!(
                "it was quantized from another checkpoint (not from `{}`)",
                file.path
            ));
        };
        if old.bytes != file.bytes {
            return Some(format!(
                "checkpoint file `{}` is {} bytes, it was {} when the cache was written",
                file.path, file.bytes, old.bytes
            ));
        }
        if old.modified_ns != file.modified_ns {
            return Some(format!(
                "checkpoint file `{}` was modified after the cache was written",
                file.path
            ));
        }
    }
    if then.len() != now.len() {
        return Some(format!(
            "it was quantized from {} checkpoint file(s), the checkpoint has {}",
            then.len(),
            now.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxc_artifact::{Buffer, ElemType, Fp8Format, Region, WeightSource};

    fn file(path: &str, bytes: u64, modified_ns: u128) -> FileId {
        FileId {
            path: path.into(),
            bytes,
            modified_ns,
        }
    }

    fn stamp() -> Stamp {
        Stamp {
            format: FORMAT.into(),
            artifact_format: 2,
            artifact_content_hash: "abc".into(),
            weights_hash: "w1".into(),
            checkpoint: vec![
                file("/c/a.safetensors", 10, 5),
                file("/c/b.safetensors", 20, 6),
            ],
        }
    }

    #[test]
    fn matching_stamps_match_whatever_the_content_hash() {
        let s = stamp();
        assert_eq!(s.mismatch(&s), None);
        let retuned = Stamp {
            artifact_content_hash: "def".into(),
            ..stamp()
        };
        assert_eq!(s.mismatch(&retuned), None, "re-tuned GEMMs keep the cache");
    }

    #[test]
    fn each_difference_is_named() {
        let s = stamp();
        let differ = |f: &dyn Fn(&mut Stamp), needle: &str| {
            let mut other = stamp();
            f(&mut other);
            let why = s.mismatch(&other).expect("stale");
            assert!(why.contains(needle), "{why}");
        };
        differ(
            &|o| o.format = "fluxc-fp8-weights/0".into(),
            "format `fluxc-fp8-weights/0`",
        );
        differ(&|o| o.artifact_format = 1, "artifact format 1");
        differ(&|o| o.weights_hash = "w2".into(), "fp8 weights");
        differ(
            &|o| o.checkpoint[1].bytes = 21,
            "`/c/b.safetensors` is 20 bytes, it was 21",
        );
        differ(
            &|o| o.checkpoint[0].modified_ns = 4,
            "`/c/a.safetensors` was modified",
        );
        differ(
            &|o| o.checkpoint[0].path = "/d/a.safetensors".into(),
            "another checkpoint",
        );
        differ(
            &|o| o.checkpoint.push(file("/c/c.safetensors", 1, 1)),
            "3 checkpoint file(s)",
        );
    }

    #[test]
    fn file_ids_follow_size_and_modification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, b"12345").unwrap();
        let id = FileId::of(&path).unwrap();
        assert_eq!(id.bytes, 5);
        assert!(id.path.ends_with("w.safetensors") && Path::new(&id.path).is_absolute());
        assert_eq!(
            FileId::of(&dir.path().join(".").join("w.safetensors")).unwrap(),
            id
        );
        std::fs::write(&path, b"123456").unwrap();
        assert_eq!(FileId::of(&path).unwrap().bytes, 6);
        assert!(FileId::of(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_weights_hash_covers_layout_derivation_buffer_and_kernels() {
        let layout = CheckpointLayout {
            name: "diffusers".into(),
            strip_prefixes: vec![],
        };
        let source = WeightSource::Fp8Quantize {
            of: Box::new(WeightSource::tensor("w")),
            format: Fp8Format::E4m3,
            per_row: true,
        };
        let buffer = Buffer::new(0, "w8", ElemType::F8e4m3, vec![4, 8], Region::Weights, 0);
        let w = |name, source, buffer| {
            vec![Fp8Weight {
                name,
                source,
                buffer,
            }]
        };
        let base = weights_hash(&layout, &w("w8", &source, &buffer), "k");
        assert_eq!(base.len(), 64);
        assert_eq!(base, weights_hash(&layout, &w("w8", &source, &buffer), "k"));
        let moved = Buffer {
            offset: 256,
            ..buffer.clone()
        };
        let per_tensor = WeightSource::Fp8Quantize {
            of: Box::new(WeightSource::tensor("w")),
            format: Fp8Format::E4m3,
            per_row: false,
        };
        let bfl = CheckpointLayout {
            name: "bfl".into(),
            ..layout.clone()
        };
        for other in [
            weights_hash(&layout, &w("w8", &source, &moved), "k"),
            weights_hash(&layout, &w("w9", &source, &buffer), "k"),
            weights_hash(&layout, &w("w8", &per_tensor, &buffer), "k"),
            weights_hash(&bfl, &w("w8", &source, &buffer), "k"),
            weights_hash(&layout, &w("w8", &source, &buffer), "k2"),
        ] {
            assert_ne!(other, base);
        }
    }
}
