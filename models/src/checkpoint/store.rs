//! An opened FLUX checkpoint: a [`fluxc_checkpoint::Checkpoint`] whose
//! layout ([`CheckpointFormat`]) has been detected, with BFL's
//! [`BFL_PREFIX`](super::BFL_PREFIX) stripped from the names of bundled
//! single files, and whose weights come back as interpreter tensors.

use std::path::Path;

use fluxc_artifact::WeightSource;
use fluxc_ir::interp::Tensor;
use fluxc_ir::Shape;

use super::bfl::{looks_like_bfl, BFL_PREFIX};
use super::{CheckpointError, CheckpointFormat};

/// A checkpoint opened for reading: memory-mapped files with parsed headers.
#[derive(Debug)]
pub struct Checkpoint {
    format: CheckpointFormat,
    inner: fluxc_checkpoint::Checkpoint,
}

impl Checkpoint {
    /// Opens the checkpoint at `path`: a diffusers directory (or a pipeline
    /// root with a `transformer/` subfolder), a shard index file, or a single
    /// `.safetensors` file in diffusers or BFL layout.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let mut inner = fluxc_checkpoint::Checkpoint::open(path)?;
        let bfl = !inner.is_sharded() && looks_like_bfl(inner.stored_names().into_iter());
        let format = if bfl {
            inner.strip_prefixes(&[BFL_PREFIX]);
            CheckpointFormat::Bfl
        } else {
            CheckpointFormat::Diffusers
        };
        Ok(Checkpoint { format, inner })
    }

    /// The layout the tensor names follow.
    pub fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// The file read: the single safetensors file, or the shard index.
    pub fn location(&self) -> &Path {
        self.inner.location()
    }

    /// Whether the checkpoint holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    /// The names of all tensors (BFL names without the bundle prefix), sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.inner.tensor_names()
    }

    /// The model-agnostic checkpoint underneath.
    pub fn inner(&self) -> &fluxc_checkpoint::Checkpoint {
        &self.inner
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
        self.inner.check(weight, source, &expected.0)
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
        self.inner.derive(weight, source).map(to_tensor)
    }
}

/// A host tensor as an interpreter tensor.
pub(crate) fn to_tensor(t: fluxc_checkpoint::HostTensor) -> Tensor {
    Tensor {
        shape: Shape::from(t.shape),
        data: t.data,
    }
}
