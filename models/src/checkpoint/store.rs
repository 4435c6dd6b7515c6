//! An opened checkpoint: its safetensors files and an index from tensor
//! name to the file holding it.
//!
//! Names are the checkpoint's own (diffusers names, or BFL names with
//! [`BFL_PREFIX`](super::BFL_PREFIX) stripped). Opening parses every header
//! but reads no tensor data; [`Checkpoint::check`] validates one weight's
//! derivation (presence, stored dtype, derived shape) from headers alone, and
//! [`Checkpoint::load`] converts its data.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use fluxc_artifact::WeightSource;
use fluxc_ir::interp::Tensor;
use fluxc_ir::Shape;

use super::bfl::{looks_like_bfl, strip_bfl_prefix};
use super::diffusers::{find_layout, Layout, ShardIndex};
use super::safetensors_io::SafetensorsFile;
use super::transform::{derived_shape, describe, materialize, RowSource};
use super::{CheckpointError, CheckpointFormat};

/// Where a tensor is stored.
#[derive(Debug)]
struct Entry {
    /// Index into `Checkpoint::files`.
    file: usize,
    /// The name in that file (may carry the BFL prefix).
    stored: String,
}

/// A checkpoint opened for reading: memory-mapped files with parsed headers.
#[derive(Debug)]
pub struct Checkpoint {
    format: CheckpointFormat,
    location: PathBuf,
    files: Vec<SafetensorsFile>,
    tensors: HashMap<String, Entry>,
}

impl Checkpoint {
    /// Opens the checkpoint at `path`: a diffusers directory (or a pipeline
    /// root with a `transformer/` subfolder), a shard index file, or a single
    /// `.safetensors` file in diffusers or BFL layout.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        match find_layout(path)? {
            Layout::Sharded(index) => Self::open_sharded(&index),
            Layout::SingleFile(file) => Self::open_single(&file),
        }
    }

    fn open_sharded(index_path: &Path) -> Result<Self, CheckpointError> {
        let index = ShardIndex::read(index_path)?;
        let shards = index.shards();
        let files = shards
            .iter()
            .map(|p| SafetensorsFile::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tensors = HashMap::with_capacity(index.weight_map.len());
        for (tensor, shard) in &index.weight_map {
            let file = shards
                .binary_search(shard)
                .ok()
                .filter(|&f| files[f].contains(tensor))
                .ok_or_else(|| CheckpointError::IndexMismatch {
                    index: index.path.clone(),
                    tensor: tensor.clone(),
                    shard: shard.clone(),
                })?;
            let stored = tensor.clone();
            tensors.insert(tensor.clone(), Entry { file, stored });
        }
        Ok(Checkpoint {
            format: CheckpointFormat::Diffusers,
            location: index_path.to_path_buf(),
            files,
            tensors,
        })
    }

    fn open_single(path: &Path) -> Result<Self, CheckpointError> {
        let file = SafetensorsFile::open(path)?;
        let names = file.names();
        let bfl = looks_like_bfl(names.iter().map(String::as_str));
        let mut tensors = HashMap::with_capacity(names.len());
        for stored in names {
            let logical = match bfl {
                true => strip_bfl_prefix(&stored).to_string(),
                false => stored.clone(),
            };
            // A name stored without the prefix wins over the prefixed copy.
            if logical != stored && file.contains(&logical) {
                continue;
            }
            tensors.insert(logical, Entry { file: 0, stored });
        }
        let format = match bfl {
            true => CheckpointFormat::Bfl,
            false => CheckpointFormat::Diffusers,
        };
        Ok(Checkpoint {
            format,
            location: path.to_path_buf(),
            files: vec![file],
            tensors,
        })
    }

    /// The layout the tensor names follow.
    pub fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// The file read: the single safetensors file, or the shard index.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// Whether the checkpoint holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The names of all tensors, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Checks, from the headers alone, that graph weight `weight` can be
    /// derived by `source` with shape `expected`: every tensor it reads is
    /// present and stored as F32, BF16 or F16, and the derivation fits.
    pub fn check(
        &self,
        weight: &str,
        source: &WeightSource,
        expected: &Shape,
    ) -> Result<(), CheckpointError> {
        let names = source.tensor_names();
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !self.contains(n))
            .map(|n| n.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(CheckpointError::MissingTensor {
                weight: weight.to_string(),
                missing,
                location: self.location.clone(),
            });
        }
        for name in names {
            let (file, stored) = self.entry(weight, name)?;
            file.check_dtype(stored)?;
        }
        let found = Shape::new(derived_shape(
            weight,
            source,
            &Lookup { ckpt: self, weight },
        )?);
        if &found != expected {
            return Err(CheckpointError::ShapeMismatch {
                weight: weight.to_string(),
                expected: expected.clone(),
                found,
                derivation: describe(source),
            });
        }
        Ok(())
    }

    /// Graph weight `weight`, derived by `source` and converted to f32, after
    /// [`check`](Self::check)ing it against `expected`.
    pub fn load(
        &self,
        weight: &str,
        source: &WeightSource,
        expected: &Shape,
    ) -> Result<Tensor, CheckpointError> {
        self.check(weight, source, expected)?;
        self.load_checked(weight, source)
    }

    /// [`load`](Self::load) without the check, for weights already checked.
    pub(crate) fn load_checked(
        &self,
        weight: &str,
        source: &WeightSource,
    ) -> Result<Tensor, CheckpointError> {
        materialize(weight, source, &Lookup { ckpt: self, weight })
    }

    /// The file and stored name of tensor `name`, which `weight` needs.
    fn entry(&self, weight: &str, name: &str) -> Result<(&SafetensorsFile, &str), CheckpointError> {
        self.tensors
            .get(name)
            .and_then(|e| Some((self.files.get(e.file)?, e.stored.as_str())))
            .ok_or_else(|| CheckpointError::MissingTensor {
                weight: weight.to_string(),
                missing: vec![name.to_string()],
                location: self.location.clone(),
            })
    }
}

/// The checkpoint's tensors as read for one weight (named in errors).
struct Lookup<'a> {
    ckpt: &'a Checkpoint,
    weight: &'a str,
}

impl RowSource for Lookup<'_> {
    fn stored_shape(&self, name: &str) -> Result<Vec<usize>, CheckpointError> {
        let (file, stored) = self.ckpt.entry(self.weight, name)?;
        let info = file
            .info(stored)
            .ok_or_else(|| CheckpointError::MissingTensor {
                weight: self.weight.to_string(),
                missing: vec![name.to_string()],
                location: file.path().to_path_buf(),
            })?;
        Ok(info.shape.clone())
    }

    fn read_rows(&self, name: &str, rows: Range<usize>) -> Result<Vec<f32>, CheckpointError> {
        let (file, stored) = self.ckpt.entry(self.weight, name)?;
        file.read_rows(stored, rows)
    }
}
