//! Where a checkpoint's files are: diffusers directory layouts and the shard
//! index of sharded checkpoints.
//!
//! A diffusers transformer directory holds either
//! `diffusion_pytorch_model.safetensors.index.json` (sharded; its `weight_map`
//! maps each tensor to the shard file holding it) or a single
//! `diffusion_pytorch_model.safetensors`. A FluxPipeline repository root holds
//! the transformer in a `transformer/` subfolder, which is searched when the
//! directory itself holds neither. A path to a single `.safetensors` file is
//! taken as is (what its names follow is for the caller to decide),
//! and a path to an `.index.json` file as that sharded checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::CheckpointError;

/// The shard index of a sharded diffusers checkpoint.
pub const INDEX_FILE: &str = "diffusion_pytorch_model.safetensors.index.json";
/// The single weights file of an unsharded diffusers checkpoint.
pub const SINGLE_FILE: &str = "diffusion_pytorch_model.safetensors";
/// The pipeline subfolder holding the transformer.
pub const TRANSFORMER_DIR: &str = "transformer";

/// Which files make up a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A sharded diffusers checkpoint, described by this index file.
    Sharded(PathBuf),
    /// One safetensors file (diffusers or BFL names).
    SingleFile(PathBuf),
}

/// The layout of the checkpoint at `path` (a directory or a file).
pub fn find_layout(path: &Path) -> Result<Layout, CheckpointError> {
    let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => CheckpointError::NotFound {
            path: path.to_path_buf(),
        },
        _ => CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if !meta.is_dir() {
        return Ok(file_layout(path));
    }
    if let Some(layout) = dir_layout(path) {
        return Ok(layout);
    }
    let sub = path.join(TRANSFORMER_DIR);
    if sub.is_dir() {
        if let Some(layout) = dir_layout(&sub) {
            return Ok(layout);
        }
    }
    Err(CheckpointError::NoCheckpointInDir {
        dir: path.to_path_buf(),
    })
}

/// The layout of a file given directly.
fn file_layout(path: &Path) -> Layout {
    let is_index = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"));
    if is_index {
        Layout::Sharded(path.to_path_buf())
    } else {
        Layout::SingleFile(path.to_path_buf())
    }
}

/// The diffusers layout directly inside `dir`, if any (the index wins).
fn dir_layout(dir: &Path) -> Option<Layout> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        return Some(Layout::Sharded(index));
    }
    let single = dir.join(SINGLE_FILE);
    single.is_file().then_some(Layout::SingleFile(single))
}

/// The parts of an index file that matter.
#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

/// A parsed shard index: tensor name → shard path (resolved next to the index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardIndex {
    /// The index file.
    pub(crate) path: PathBuf,
    /// Tensor name → shard file.
    pub(crate) weight_map: BTreeMap<String, PathBuf>,
}

impl ShardIndex {
    /// Reads and parses the index at `path`, checking that every shard it
    /// names exists.
    pub(crate) fn read(path: &Path) -> Result<Self, CheckpointError> {
        let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let parsed: IndexFile =
            serde_json::from_str(&text).map_err(|e| CheckpointError::BadIndex {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let weight_map: BTreeMap<String, PathBuf> = parsed
            .weight_map
            .into_iter()
            .map(|(tensor, shard)| (tensor, dir.join(shard)))
            .collect();
        let index = ShardIndex {
            path: path.to_path_buf(),
            weight_map,
        };
        index.check_shards_exist()?;
        Ok(index)
    }

    /// The distinct shard files, sorted.
    pub(crate) fn shards(&self) -> Vec<PathBuf> {
        let mut shards: Vec<PathBuf> = self.weight_map.values().cloned().collect();
        shards.sort();
        shards.dedup();
        shards
    }

    fn check_shards_exist(&self) -> Result<(), CheckpointError> {
        match self.shards().into_iter().find(|s| !s.is_file()) {
            Some(shard) => Err(CheckpointError::MissingShard {
                index: self.path.clone(),
                shard,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_taken_as_given() {
        assert_eq!(
            file_layout(Path::new("/x/flux1-dev.safetensors")),
            Layout::SingleFile("/x/flux1-dev.safetensors".into())
        );
        assert_eq!(
            file_layout(Path::new("/x/model.safetensors.index.json")),
            Layout::Sharded("/x/model.safetensors.index.json".into())
        );
    }
}
