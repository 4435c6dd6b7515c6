//! `manifest.json`: what an artifact is and which weights it needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{BufferId, WeightSource};

/// The artifact format this crate reads and writes. Bumped on every
/// incompatible change; the runtime refuses other versions. 4: fp8
/// attention (`AttentionOperands::Fp8TensorMaps`, `Attention::scales`).
/// 5: a GEMM's C operand (`Gemm::c`; an older runtime would ignore it).
/// 6: cuDNN convolutions (`Step::Conv`). 7: fp8 attention's vt box apart
/// from its key tile (`AttentionOperands::Fp8TensorMaps::vt_rows`).
pub const FORMAT_VERSION: u32 = 7;

/// A checkpoint naming layout the artifact can load weights from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointLayout {
    /// `diffusers` or `bfl`.
    pub name: String,
    /// Prefixes stripped from stored tensor names before matching
    /// (BFL files sometimes carry `model.diffusion_model.`).
    pub strip_prefixes: Vec<String>,
}

/// One weight buffer and how to fill it from each layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightEntry {
    /// The graph's name for the weight.
    pub name: String,
    /// Its buffer in the weight region.
    pub buffer: BufferId,
    /// Its derivation from stored tensors, per layout name.
    pub sources: BTreeMap<String, WeightSource>,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The compiler that wrote it (`fluxc 0.1.0`).
    pub compiler: String,
    /// `[model] name` of the model.toml.
    pub model_name: String,
    /// [`content_hash`] of `schedule.json` and `kernels.cu`.
    pub content_hash: String,
    /// The GPU architecture the kernels are compiled for (`sm_90a`).
    pub arch: String,
    /// Layouts weights can be loaded from, tried in order: the first whose
    /// every source tensor exists in the checkpoint is used.
    pub layouts: Vec<CheckpointLayout>,
    /// Every weight buffer.
    pub weights: Vec<WeightEntry>,
}

/// The hash that ties a manifest to its schedule and kernels: SHA-256 over
/// both files' bytes (each prefixed by its length), as lowercase hex.
pub fn content_hash(schedule_json: &[u8], kernels_cu: &[u8]) -> String {
    hash_parts([schedule_json, kernels_cu])
}

/// SHA-256 over `parts`, each prefixed by its length (so that moving bytes
/// from one part to the next changes the hash), as lowercase hex: the form
/// of every content hash fluxc keys files by.
pub fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_separates_the_files() {
        let a = content_hash(b"ab", b"c");
        assert_eq!(a.len(), 64);
        assert_ne!(a, content_hash(b"a", b"bc"));
        assert_eq!(a, content_hash(b"ab", b"c"));
    }
}
