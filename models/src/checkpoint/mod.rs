//! Loading FLUX transformer weights from real checkpoints.
//!
//! The model builder names every weight input of the graph as diffusers names
//! it (`transformer_blocks.0.attn.to_q.weight`). Checkpoints come in two
//! layouts ([`CheckpointFormat`]): diffusers' (a directory with one or several
//! sharded safetensors files, or a single file) where those names are stored
//! as is, and the original BFL single file (`flux1-dev.safetensors`), whose
//! names and fusions differ. [`resolve_sources`] says for each weight how it is
//! derived from the stored tensors (a [`WeightSource`], which the compiler
//! records in its manifest); [`load_weights`] detects the layout, checks every
//! weight (present, convertible dtype, shape after derivation) before reading
//! any data, and returns them all in f32 for the CPU interpreter.
//!
//! Everything that does not know FLUX (safetensors files, diffusers
//! directory layouts and shard indexes, applying derivations, the error
//! types) lives in the `fluxc-checkpoint` crate, which the runtime shares;
//! this module adds the model knowledge. Modules: [`bfl`] (the name map),
//! `store` ([`Checkpoint`], layout detection on top of
//! [`fluxc_checkpoint::Checkpoint`]).

pub mod bfl;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use fluxc_artifact::WeightSource;
use fluxc_ir::interp::Tensor;
use fluxc_ir::{Graph, InputKind, Op, Shape};

pub use bfl::{bfl_source, BFL_PREFIX};
pub use fluxc_checkpoint::{CheckpointError, DeriveError};
pub use store::Checkpoint;

/// The naming layout of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckpointFormat {
    /// diffusers' `FluxTransformer2DModel` names: graph weights are stored as is.
    Diffusers,
    /// The original Black Forest Labs single file: fused qkv and `linear1`,
    /// shift-then-scale final modulation; see [`bfl_source`].
    Bfl,
}

/// The widths the BFL name map needs to split fused tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BflDims {
    /// Transformer width (rows of each of q, k, v).
    pub hidden_size: usize,
    /// Hidden width of the single blocks' MLP (rows of its input projection).
    pub mlp_hidden: usize,
}

impl BflDims {
    /// The widths of the transformer `cfg` describes.
    pub fn of(cfg: &crate::ModelConfig) -> BflDims {
        BflDims {
            hidden_size: cfg.transformer.hidden_size,
            mlp_hidden: cfg.mlp_hidden(),
        }
    }

    /// FLUX.1-dev and FLUX.1-schnell: width 3072, MLP ratio 4.
    pub const FLUX1: BflDims = BflDims {
        hidden_size: 3072,
        mlp_hidden: 12288,
    };
}

/// The layout of the checkpoint at `path` (see [`Checkpoint::open`] for the
/// paths accepted). A single file is BFL when its tensor names (possibly
/// under [`BFL_PREFIX`]) include `double_blocks.*`, `single_blocks.*` or
/// `img_in.weight`.
pub fn detect_format(path: &Path) -> Result<CheckpointFormat, CheckpointError> {
    Ok(Checkpoint::open(path)?.format())
}

/// How each weight input of `graph` (by diffusers name) is derived from a
/// checkpoint in `format`: the stored tensor of the same name for diffusers,
/// [`bfl_source`] for BFL. Fails on a weight the BFL layout does not have.
pub fn resolve_sources(
    graph: &Graph,
    format: CheckpointFormat,
    dims: BflDims,
) -> Result<BTreeMap<String, WeightSource>, CheckpointError> {
    resolve_derived_sources(graph, &BTreeMap::new(), format, dims)
}

/// Like [`resolve_sources`] for a graph whose passes derived some weights
/// from others: `derived` maps such a weight's name to its derivation over
/// diffusers names (weights not in it are diffusers names themselves). The
/// result is over the checkpoint's own tensor names, simplified (BFL's fused
/// `qkv` sliced into q, k, v and stacked again is read as stored).
pub fn resolve_derived_sources(
    graph: &Graph,
    derived: &BTreeMap<String, WeightSource>,
    format: CheckpointFormat,
    dims: BflDims,
) -> Result<BTreeMap<String, WeightSource>, CheckpointError> {
    graph_weights(graph)
        .into_iter()
        .map(|(name, _)| {
            let over_diffusers = derived
                .get(&name)
                .cloned()
                .unwrap_or_else(|| WeightSource::tensor(&name));
            let source = compose(&over_diffusers, format, dims)?;
            Ok((name, fluxc_checkpoint::simplify(source)))
        })
        .collect()
}

/// Loads every weight input of `graph` from the checkpoint at `path` (layout
/// detected), in f32, keyed by diffusers name. Every weight is checked before
/// any data is read: a missing tensor, an unconvertible stored dtype or a
/// shape other than the graph's is an error naming the weight and the
/// checkpoint tensors. Weights may be stored as F32, BF16 or F16 whatever
/// dtype the graph gives them.
pub fn load_weights(
    graph: &Graph,
    path: &Path,
    dims: BflDims,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    load_derived_weights(graph, &BTreeMap::new(), path, dims)
}

/// Like [`load_weights`] for a graph whose passes derived some weights from
/// others (see [`resolve_derived_sources`]): each derived weight is computed
/// from the stored tensors as its derivation says.
pub fn load_derived_weights(
    graph: &Graph,
    derived: &BTreeMap<String, WeightSource>,
    path: &Path,
    dims: BflDims,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let ckpt = Checkpoint::open(path)?;
    let sources = resolve_derived_sources(graph, derived, ckpt.format(), dims)?;
    let mut plan = Vec::new();
    for (name, shape) in graph_weights(graph) {
        let source = &sources[&name];
        ckpt.check(&name, source, &shape)?;
        plan.push((name, source));
    }
    plan.into_iter()
        .map(|(name, source)| {
            let tensor = ckpt.load_checked(&name, source)?;
            Ok((name, tensor))
        })
        .collect()
}

/// `source` (over diffusers names) with every stored-tensor leaf replaced by
/// its derivation in a checkpoint of `format`.
fn compose(
    source: &WeightSource,
    format: CheckpointFormat,
    dims: BflDims,
) -> Result<WeightSource, CheckpointError> {
    let inner = |of: &WeightSource| compose(of, format, dims).map(Box::new);
    Ok(match source {
        WeightSource::Tensor { name } => source_for(name, format, dims)?,
        WeightSource::Rows { of, start, len } => WeightSource::Rows {
            of: inner(of)?,
            start: *start,
            len: *len,
        },
        WeightSource::SwapHalves { of } => WeightSource::SwapHalves { of: inner(of)? },
        WeightSource::Concat { parts } => WeightSource::Concat {
            parts: parts
                .iter()
                .map(|p| compose(p, format, dims))
                .collect::<Result<_, _>>()?,
        },
        WeightSource::Reshape { of, shape } => WeightSource::Reshape {
            of: inner(of)?,
            shape: shape.clone(),
        },
        WeightSource::Fp8Quantize {
            of,
            format: f,
            per_row,
        } => WeightSource::Fp8Quantize {
            of: inner(of)?,
            format: *f,
            per_row: *per_row,
        },
        WeightSource::Fp8Scale {
            of,
            format: f,
            per_row,
        } => WeightSource::Fp8Scale {
            of: inner(of)?,
            format: *f,
            per_row: *per_row,
        },
    })
}

/// Every tensor of one safetensors file, in f32, keyed by name (for inputs
/// and reference outputs; weights go through [`load_weights`]).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>, CheckpointError> {
    Ok(fluxc_checkpoint::read_safetensors(path)?
        .into_iter()
        .map(|(name, t)| (name, store::to_tensor(t)))
        .collect())
}

/// The derivation of diffusers weight `name` in a checkpoint of `format`.
fn source_for(
    name: &str,
    format: CheckpointFormat,
    dims: BflDims,
) -> Result<WeightSource, CheckpointError> {
    match format {
        CheckpointFormat::Diffusers => Ok(WeightSource::tensor(name)),
        CheckpointFormat::Bfl => {
            bfl_source(name, dims.hidden_size, dims.mlp_hidden).ok_or_else(|| {
                CheckpointError::UnmappedWeight {
                    weight: name.to_string(),
                    layout: "original BFL FLUX".to_string(),
                }
            })
        }
    }
}

/// The weight inputs of `graph` with their shapes, in node order.
fn graph_weights(graph: &Graph) -> Vec<(String, Shape)> {
    graph
        .inputs()
        .into_iter()
        .filter_map(|id| {
            let node = graph.node(id);
            match &node.op {
                Op::Input {
                    name,
                    kind: InputKind::Weight,
                } => Some((name.clone(), node.ty.shape.clone())),
                _ => None,
            }
        })
        .collect()
}
