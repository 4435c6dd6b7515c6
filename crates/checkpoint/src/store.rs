//! An opened checkpoint: its safetensors files and an index from tensor
//! name to the file holding it.
//!
//! Names are looked up as *logical* names: the stored names, with the
//! prefixes given to [`Checkpoint::strip_prefixes`] removed (bundled
//! single-file checkpoints put a model under a prefix such as
//! `model.diffusion_model.`). Opening parses every header but reads no tensor
//! data; [`Checkpoint::check`] validates one weight's derivation (presence,
//! stored dtype, derived shape) from headers alone, [`Checkpoint::derive`]
//! converts its data, and [`Checkpoint::stored_bytes`] hands out the stored
//! bytes of derivations that are a contiguous range of one tensor.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use fluxc_artifact::WeightSource;
use safetensors::Dtype;

use crate::error::ShapeText;
use crate::layout::{find_layout, Layout, ShardIndex};
use crate::safetensors_io::SafetensorsFile;
use crate::transform::{derived_shape, describe, materialize, RowSource};
use crate::{CheckpointError, HostTensor};

/// Where a tensor is stored.
#[derive(Debug, Clone)]
struct Entry {
    /// Index into `Checkpoint::files`.
    file: usize,
    /// The name in that file (may carry a stripped prefix).
    stored: String,
}

/// A checkpoint opened for reading: memory-mapped files with parsed headers.
#[derive(Debug)]
pub struct Checkpoint {
    location: PathBuf,
    sharded: bool,
    files: Vec<SafetensorsFile>,
    /// Every stored tensor, by its stored name.
    stored: Vec<(String, Entry)>,
    /// Logical name → where it is stored.
    tensors: HashMap<String, Entry>,
}

/// The stored bytes of a derivation that is a contiguous range of one
/// stored tensor (see [`Checkpoint::stored_bytes`]).
#[derive(Debug, Clone, Copy)]
pub struct StoredBytes<'a> {
    /// The stored element type.
    pub dtype: Dtype,
    /// Little-endian elements, row-major.
    pub bytes: &'a [u8],
}

impl Checkpoint {
    /// Opens the checkpoint at `path`: a diffusers directory (or a pipeline
    /// root with a `transformer/` subfolder), a shard index file, or a single
    /// `.safetensors` file. Names are as stored until
    /// [`strip_prefixes`](Self::strip_prefixes) is called.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        match find_layout(path)? {
            Layout::Sharded(index) => Self::open_sharded(&index),
            Layout::SingleFile(file) => Self::open_file(&file),
        }
    }

    /// Opens one `.safetensors` file, whatever its name.
    pub fn open_file(path: &Path) -> Result<Self, CheckpointError> {
        let file = SafetensorsFile::open(path)?;
        let stored: Vec<(String, Entry)> = file
            .names()
            .into_iter()
            .map(|name| {
                let entry = Entry {
                    file: 0,
                    stored: name.clone(),
                };
                (name, entry)
            })
            .collect();
        Ok(Self::new(path, false, vec![file], stored))
    }

    fn open_sharded(index_path: &Path) -> Result<Self, CheckpointError> {
        let index = ShardIndex::read(index_path)?;
        let shards = index.shards();
        let files = shards
            .iter()
            .map(|p| SafetensorsFile::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut stored = Vec::with_capacity(index.weight_map.len());
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
            let entry = Entry {
                file,
                stored: tensor.clone(),
            };
            stored.push((tensor.clone(), entry));
        }
        Ok(Self::new(index_path, true, files, stored))
    }

    fn new(
        location: &Path,
        sharded: bool,
        files: Vec<SafetensorsFile>,
        stored: Vec<(String, Entry)>,
    ) -> Self {
        let tensors = stored.iter().cloned().collect();
        Checkpoint {
            location: location.to_path_buf(),
            sharded,
            files,
            stored,
            tensors,
        }
    }

    /// Looks tensors up with the first of `prefixes` that a stored name
    /// starts with removed (names without any of them are kept as they are).
    /// A name stored without a prefix wins over a prefixed copy of it.
    /// Replaces the prefixes of an earlier call; an empty list restores the
    /// stored names.
    pub fn strip_prefixes<S: AsRef<str>>(&mut self, prefixes: &[S]) {
        let stored_names: HashSet<&str> = self.stored.iter().map(|(n, _)| n.as_str()).collect();
        let mut tensors = HashMap::with_capacity(self.stored.len());
        for (name, entry) in &self.stored {
            let logical = prefixes
                .iter()
                .find_map(|p| name.strip_prefix(p.as_ref()))
                .filter(|rest| !rest.is_empty())
                .unwrap_or(name);
            if logical != name && stored_names.contains(logical) {
                continue;
            }
            tensors.insert(logical.to_string(), entry.clone());
        }
        self.tensors = tensors;
    }

    /// The file read: the single safetensors file, or the shard index.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// The safetensors files read, in the order opened (the index file of
    /// a sharded checkpoint is [`location`](Self::location)).
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(SafetensorsFile::path).collect()
    }

    /// Whether the checkpoint is sharded (described by an index file).
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// The stored tensor names (before stripping prefixes), sorted.
    pub fn stored_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.stored.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// Whether the checkpoint holds tensor `name` (a logical name).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The logical names of all tensors, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Stored dtype and shape of tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<(Dtype, &[usize])> {
        let entry = self.tensors.get(name)?;
        let info = self.files.get(entry.file)?.info(&entry.stored)?;
        Some((info.dtype, &info.shape))
    }

    /// The tensors `source` reads that the checkpoint lacks, in order of
    /// first use.
    pub fn missing_tensors(&self, source: &WeightSource) -> Vec<String> {
        source
            .tensor_names()
            .into_iter()
            .filter(|n| !self.contains(n))
            .map(str::to_string)
            .collect()
    }

    /// The shape `source` derives, from the headers alone, checking every
    /// step against the stored shapes. `weight` names the result in errors.
    pub fn derived_shape(
        &self,
        weight: &str,
        source: &WeightSource,
    ) -> Result<Vec<usize>, CheckpointError> {
        self.check_present(weight, source)?;
        derived_shape(weight, source, &Lookup { ckpt: self, weight })
    }

    /// Checks, from the headers alone, that weight `weight` can be derived
    /// by `source` with shape `expected`: every tensor it reads is present
    /// and stored as F32, BF16 or F16, and the derivation fits.
    pub fn check(
        &self,
        weight: &str,
        source: &WeightSource,
        expected: &[usize],
    ) -> Result<(), CheckpointError> {
        self.check_present(weight, source)?;
        for name in source.tensor_names() {
            let (file, stored) = self.entry(weight, name)?;
            file.check_dtype(stored)?;
        }
        let found = derived_shape(weight, source, &Lookup { ckpt: self, weight })?;
        if found != expected {
            return Err(CheckpointError::ShapeMismatch {
                weight: weight.to_string(),
                expected: ShapeText::from(expected),
                found: ShapeText(found),
                derivation: describe(source),
            });
        }
        Ok(())
    }

    /// Weight `weight`, derived by `source` and converted to f32, after
    /// [`check`](Self::check)ing it against `expected`.
    pub fn load(
        &self,
        weight: &str,
        source: &WeightSource,
        expected: &[usize],
    ) -> Result<HostTensor, CheckpointError> {
        self.check(weight, source, expected)?;
        self.derive(weight, source)
    }

    /// Weight `weight`, derived by `source` and converted to f32, with
    /// whatever shape the derivation gives.
    pub fn derive(
        &self,
        weight: &str,
        source: &WeightSource,
    ) -> Result<HostTensor, CheckpointError> {
        self.check_present(weight, source)?;
        materialize(weight, source, &Lookup { ckpt: self, weight })
    }

    /// The stored bytes of what `source` derives, when that is a contiguous
    /// range of one stored tensor (the tensor itself, or rows of it, or rows
    /// of rows): no conversion, no copy. `None` for every other derivation,
    /// which [`derive`](Self::derive) computes instead.
    pub fn stored_bytes(
        &self,
        weight: &str,
        source: &WeightSource,
    ) -> Result<Option<StoredBytes<'_>>, CheckpointError> {
        let Some((name, rows)) = self.row_range(weight, source)? else {
            return Ok(None);
        };
        let (file, stored) = self.entry(weight, name)?;
        Ok(file
            .raw_rows(stored, rows)?
            .map(|(dtype, bytes)| StoredBytes { dtype, bytes }))
    }

    /// `(tensor, rows)` when `source` is a row range of one stored tensor.
    fn row_range<'s>(
        &self,
        weight: &str,
        source: &'s WeightSource,
    ) -> Result<Option<(&'s str, Range<usize>)>, CheckpointError> {
        match source {
            WeightSource::Tensor { name } => {
                let shape = self.derived_shape(weight, source)?;
                let rows = crate::safetensors_io::row_layout(&shape).0;
                Ok(Some((name, 0..rows)))
            }
            WeightSource::Rows { of, start, len } => {
                // Checks the range against the source.
                self.derived_shape(weight, source)?;
                Ok(self
                    .row_range(weight, of)?
                    .map(|(name, outer)| (name, outer.start + start..outer.start + start + len)))
            }
            _ => Ok(None),
        }
    }

    /// Fails with [`CheckpointError::MissingTensor`] naming every tensor
    /// `source` reads that is absent.
    fn check_present(&self, weight: &str, source: &WeightSource) -> Result<(), CheckpointError> {
        let missing = self.missing_tensors(source);
        if missing.is_empty() {
            return Ok(());
        }
        Err(CheckpointError::MissingTensor {
            weight: weight.to_string(),
            missing,
            location: self.location.clone(),
        })
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
