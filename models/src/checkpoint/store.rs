//! An opened FLUX checkpoint: a [`fluxc_checkpoint::Checkpoint`] whose
//! layout ([`CheckpointFormat`]) has been detected, with the bundle prefixes
//! of BFL files ([`BFL_PREFIX`](super::BFL_PREFIX) for the transformer,
//! [`VAE_PREFIXES`](super::VAE_PREFIXES) for the VAE) stripped from the
//! names of bundled single files, and whose weights come back as
//! interpreter tensors.

use std::path::Path;

use fluxc_artifact::WeightSource;
use fluxc_ir::interp::Tensor;
use fluxc_ir::Shape;

use super::bfl::{looks_like_bfl, BFL_PREFIX};
use super::bfl_vae::{looks_like_bfl_vae, VAE_PREFIXES};
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
    /// `.safetensors` file in diffusers or BFL layout (transformer, VAE, or
    /// a bundle of both).
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let mut inner = fluxc_checkpoint::Checkpoint::open(path)?;
        let prefixes = original_prefixes(&inner);
        let format = if prefixes.is_empty() {
            CheckpointFormat::Diffusers
        } else {
            inner.strip_prefixes(&prefixes);
            CheckpointFormat::Bfl
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

/// The bundle prefixes to strip from a single file in the original BFL
/// layout (the transformer's, the VAE's, or both for a bundle); empty when
/// the checkpoint is not in that layout.
fn original_prefixes(inner: &fluxc_checkpoint::Checkpoint) -> Vec<&'static str> {
    let mut prefixes = Vec::new();
    if inner.is_sharded() {
        return prefixes;
    }
    if looks_like_bfl(inner.stored_names().into_iter()) {
        prefixes.push(BFL_PREFIX);
    }
    if looks_like_bfl_vae(inner.stored_names().into_iter()) {
        prefixes.extend(VAE_PREFIXES);
    }
    prefixes
}

/// A host tensor as an interpreter tensor.
pub(crate) fn to_tensor(t: fluxc_checkpoint::HostTensor) -> Tensor {
    Tensor {
        shape: Shape::from(t.shape),
        data: t.data,
    }
}
