//! Reading checkpoints without knowing the model: memory-mapped safetensors
//! files, diffusers directory layouts, and the host-side application of
//! [`fluxc_artifact::WeightSource`] derivations.
//!
//! Both the compiler side (`fluxc-models`, which adds the FLUX name maps) and
//! the runtime (which has no model knowledge at all) read weights through
//! this crate:
//!
//! - [`Checkpoint::open`] finds the files of a checkpoint (a single
//!   `.safetensors` file, a sharded diffusers directory with
//!   `diffusion_pytorch_model.safetensors.index.json`, or a pipeline root with
//!   a `transformer/` subfolder) and parses their headers;
//!   [`Checkpoint::strip_prefixes`] drops caller-given name prefixes
//!   (bundled files store a model under e.g. `model.diffusion_model.`);
//! - [`Checkpoint::check`] validates a derivation against the headers and an
//!   expected shape, [`Checkpoint::derive`] computes it in f32 (F32, BF16 and
//!   F16 stored tensors), converting only the rows it needs;
//!   [`Checkpoint::stored_bytes`] hands out the stored bytes of derivations
//!   that are plain row ranges;
//! - [`read_safetensors`] and [`read_safetensors_any`] read whole files (for
//!   activations and reference outputs).
//!
//! Modules: `layout` (directory layouts, shard index), `safetensors_io`
//! (mapping files, dtype conversion), `transform` (applying derivations),
//! `store` ([`Checkpoint`]), [`fp8`] (host fp8 rounding), [`simplify`]
//! (merging row slices of composed derivations), `error`.

mod error;
pub mod fp8;
mod layout;
mod safetensors_io;
mod simplify;
mod store;
mod transform;

use std::collections::BTreeMap;
use std::path::Path;

pub use error::{CheckpointError, DeriveError, ShapeText};
pub use layout::{find_layout, Layout, INDEX_FILE, SINGLE_FILE, TRANSFORMER_DIR};
pub use safetensors::Dtype;
pub use safetensors_io::{row_layout, SafetensorsFile};
pub use simplify::simplify;
pub use store::{Checkpoint, StoredBytes};
pub use transform::describe;

/// A dense row-major f32 tensor on the host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostTensor {
    /// Shape, outermost first (empty for a scalar).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor of `shape` holding `data`; fails (saying why) unless `data`
    /// has exactly as many elements as `shape` describes.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, String> {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("shape {} overflows", ShapeText(shape.clone())))?;
        if numel != data.len() {
            return Err(format!(
                "shape {} has {numel} elements, data has {}",
                ShapeText(shape),
                data.len()
            ));
        }
        Ok(HostTensor { shape, data })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Every tensor of one safetensors file, in f32, keyed by name. Tensors must
/// be stored as F32, BF16 or F16.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, CheckpointError> {
    let file = SafetensorsFile::open(path)?;
    file.names()
        .into_iter()
        .map(|name| {
            let shape = file
                .info(&name)
                .map(|i| i.shape.clone())
                .unwrap_or_default();
            let rows = row_layout(&shape).0;
            let data = file.read_rows(&name, 0..rows)?;
            Ok((name, HostTensor { shape, data }))
        })
        .collect()
}

/// Like [`read_safetensors`], converting every numeric stored dtype (F64,
/// fp8, integers, bool too) to f32.
pub fn read_safetensors_any(path: &Path) -> Result<BTreeMap<String, HostTensor>, CheckpointError> {
    let file = SafetensorsFile::open(path)?;
    file.names()
        .into_iter()
        .map(|name| {
            let shape = file
                .info(&name)
                .map(|i| i.shape.clone())
                .unwrap_or_default();
            let data = file.read_any(&name)?;
            Ok((name, HostTensor { shape, data }))
        })
        .collect()
}
