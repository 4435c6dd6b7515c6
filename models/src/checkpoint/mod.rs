//! Loading FLUX transformer and VAE decoder weights from real checkpoints.
//!
//! The model builders name every weight input of the graph as diffusers names
//! it (`transformer_blocks.0.attn.to_q.weight`, `decoder.conv_in.weight`).
//! Checkpoints come in two layouts ([`CheckpointFormat`]): diffusers' (a
//! directory with one or several sharded safetensors files, or a single file)
//! where those names are stored as is, and the original BFL single files
//! (`flux1-dev.safetensors`, `ae.safetensors`), whose names and fusions
//! differ. Which original name map applies, and the widths it needs, is a
//! [`NameMap`] (`NameMap::of(&config)`). [`resolve_sources`] says for each
//! weight how it is derived from the stored tensors (a [`WeightSource`], which
//! the compiler records in its manifest); [`load_weights`] detects the layout,
//! checks every weight (present, convertible dtype, shape after derivation)
//! before reading any data, and returns them all in f32 for the CPU
//! interpreter.
//!
//! Everything that does not know FLUX (safetensors files, diffusers
//! directory layouts and shard indexes, applying derivations, the error
//! types) lives in the `fluxc-checkpoint` crate, which the runtime shares;
//! this module adds the model knowledge. Modules: [`bfl`] (the transformer's
//! name map), [`bfl_vae`] (the VAE decoder's), `store` ([`Checkpoint`],
//! layout detection on top of [`fluxc_checkpoint::Checkpoint`]).

pub mod bfl;
pub mod bfl_vae;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use fluxc_artifact::WeightSource;
use fluxc_ir::interp::Tensor;
use fluxc_ir::{Graph, InputKind, Op, Shape};

use crate::config::{Architecture, MissingSection, TransformerConfig, VaeConfig};
use crate::ModelConfig;

pub use bfl::{bfl_source, BFL_PREFIX};
pub use bfl_vae::{bfl_vae_source, VAE_PREFIXES};
pub use fluxc_checkpoint::{CheckpointError, DeriveError};
pub use store::Checkpoint;

/// The naming layout of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckpointFormat {
    /// diffusers' `FluxTransformer2DModel` / `AutoencoderKL` names: graph
    /// weights are stored as is.
    Diffusers,
    /// The original Black Forest Labs single files: the transformer's
    /// (`flux1-*.safetensors`: fused qkv and `linear1`, shift-then-scale final
    /// modulation; see [`bfl_source`]) or the VAE's (`ae.safetensors`, LDM
    /// names, 1×1-conv attention projections; see [`bfl_vae_source`]).
    Bfl,
}

/// Which original-layout name map a graph's weights go through, with the
/// widths it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NameMap {
    /// The FLUX transformer ↔ BFL `flux1-*.safetensors` ([`bfl_source`]).
    Transformer(BflDims),
    /// The FLUX VAE decoder ↔ BFL `ae.safetensors` ([`bfl_vae_source`]).
    VaeDecoder(VaeDims),
}

impl NameMap {
    /// The map for the model `cfg` describes (by its architecture); fails
    /// only on an unvalidated config that lacks the architecture's section.
    pub fn of(cfg: &ModelConfig) -> Result<NameMap, MissingSection> {
        Ok(match cfg.model.architecture {
            Architecture::FluxTransformer => NameMap::Transformer(BflDims::of(cfg.transformer()?)),
            Architecture::FluxVaeDecoder => NameMap::VaeDecoder(VaeDims::of(cfg.vae()?)),
        })
    }

    /// How diffusers weight `name` is derived from the original checkpoint;
    /// `None` when the original layout has no counterpart.
    pub fn original_source(&self, name: &str) -> Option<WeightSource> {
        match *self {
            NameMap::Transformer(d) => bfl_source(name, d.hidden_size, d.mlp_hidden),
            NameMap::VaeDecoder(d) => bfl_vae_source(name, d),
        }
    }

    /// The prefixes under which single-file bundles store this model's
    /// original tensors (stripped when reading).
    pub fn bundle_prefixes(&self) -> &'static [&'static str] {
        match self {
            NameMap::Transformer(_) => &[BFL_PREFIX],
            NameMap::VaeDecoder(_) => &VAE_PREFIXES,
        }
    }

    /// The original layout, in words (for errors).
    pub fn layout_name(&self) -> &'static str {
        match self {
            NameMap::Transformer(_) => "original BFL FLUX",
            NameMap::VaeDecoder(_) => "original BFL VAE (ae.safetensors)",
        }
    }
}

impl From<BflDims> for NameMap {
    fn from(dims: BflDims) -> Self {
        NameMap::Transformer(dims)
    }
}

impl From<VaeDims> for NameMap {
    fn from(dims: VaeDims) -> Self {
        NameMap::VaeDecoder(dims)
    }
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
    /// The widths of the transformer `t` describes.
    pub fn of(t: &TransformerConfig) -> BflDims {
        BflDims {
            hidden_size: t.hidden_size,
            mlp_hidden: t.mlp_hidden(),
        }
    }

    /// FLUX.1-dev and FLUX.1-schnell: width 3072, MLP ratio 4.
    pub const FLUX1: BflDims = BflDims {
        hidden_size: 3072,
        mlp_hidden: 12288,
    };
}

/// What the VAE decoder's name map needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VaeDims {
    /// Levels of the decoder (`len(block_out_channels)`): the original numbers
    /// them in the opposite order.
    pub up_blocks: usize,
    /// Width of the mid-block attention (the last of `block_out_channels`):
    /// the original's 1×1-conv projections are reshaped to `[C, C]`.
    pub attention_channels: usize,
}

impl VaeDims {
    /// The widths of the VAE `v` describes.
    pub fn of(v: &VaeConfig) -> VaeDims {
        VaeDims {
            up_blocks: v.block_out_channels.len(),
            attention_channels: v.mid_channels(),
        }
    }

    /// FLUX.1's VAE: four levels, attention width 512.
    pub const FLUX1: VaeDims = VaeDims {
        up_blocks: 4,
        attention_channels: 512,
    };
}

/// The layout of the checkpoint at `path` (see [`Checkpoint::open`] for the
/// paths accepted). A single file is BFL when its tensor names (possibly
/// under [`BFL_PREFIX`]) include `double_blocks.*`, `single_blocks.*` or
/// `img_in.weight` (the transformer), or (possibly under one of
/// [`VAE_PREFIXES`]) `decoder.up.*`, `decoder.mid.*`, `decoder.norm_out.*` or
/// their `encoder.` counterparts (the VAE).
pub fn detect_format(path: &Path) -> Result<CheckpointFormat, CheckpointError> {
    Ok(Checkpoint::open(path)?.format())
}

/// How each weight input of `graph` (by diffusers name) is derived from a
/// checkpoint in `format`: the stored tensor of the same name for diffusers,
/// `map`'s original source for BFL. Fails on a weight the BFL layout does
/// not have.
pub fn resolve_sources(
    graph: &Graph,
    format: CheckpointFormat,
    map: impl Into<NameMap>,
) -> Result<BTreeMap<String, WeightSource>, CheckpointError> {
    resolve_derived_sources(graph, &BTreeMap::new(), format, map)
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
    map: impl Into<NameMap>,
) -> Result<BTreeMap<String, WeightSource>, CheckpointError> {
    let map = map.into();
    graph_weights(graph)
        .into_iter()
        .map(|(name, _)| {
            let over_diffusers = derived
                .get(&name)
                .cloned()
                .unwrap_or_else(|| WeightSource::tensor(&name));
            let source = compose(&over_diffusers, format, map)?;
            Ok((name, fluxc_checkpoint::simplify(source)))
        })
        .collect()
}

/// Loads every weight input of `graph` from the checkpoint at `path` (layout
/// detected; `map` says which original name map applies), in f32, keyed by
/// diffusers name. Every weight is checked before
/// any data is read: a missing tensor, an unconvertible stored dtype or a
/// shape other than the graph's is an error naming the weight and the
/// checkpoint tensors. Weights may be stored as F32, BF16 or F16 whatever
/// dtype the graph gives them.
pub fn load_weights(
    graph: &Graph,
    path: &Path,
    map: impl Into<NameMap>,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    load_derived_weights(graph, &BTreeMap::new(), path, map)
}

/// Like [`load_weights`] for a graph whose passes derived some weights from
/// others (see [`resolve_derived_sources`]): each derived weight is computed
/// from the stored tensors as its derivation says.
pub fn load_derived_weights(
    graph: &Graph,
    derived: &BTreeMap<String, WeightSource>,
    path: &Path,
    map: impl Into<NameMap>,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let ckpt = Checkpoint::open(path)?;
    let sources = resolve_derived_sources(graph, derived, ckpt.format(), map)?;
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
    map: NameMap,
) -> Result<WeightSource, CheckpointError> {
    let inner = |of: &WeightSource| compose(of, format, map).map(Box::new);
    Ok(match source {
        WeightSource::Tensor { name } => source_for(name, format, map)?,
        WeightSource::Rows { of, start, len } => WeightSource::Rows {
            of: inner(of)?,
            start: *start,
            len: *len,
        },
        WeightSource::SwapHalves { of } => WeightSource::SwapHalves { of: inner(of)? },
        WeightSource::Concat { parts } => WeightSource::Concat {
            parts: parts
                .iter()
                .map(|p| compose(p, format, map))
                .collect::<Result<_, _>>()?,
        },
        WeightSource::Reshape { of, shape } => WeightSource::Reshape {
            of: inner(of)?,
            shape: shape.clone(),
        },
        WeightSource::Permute { of, perm } => WeightSource::Permute {
            of: inner(of)?,
            perm: perm.clone(),
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
    map: NameMap,
) -> Result<WeightSource, CheckpointError> {
    match format {
        CheckpointFormat::Diffusers => Ok(WeightSource::tensor(name)),
        CheckpointFormat::Bfl => {
            map.original_source(name)
                .ok_or_else(|| CheckpointError::UnmappedWeight {
                    weight: name.to_string(),
                    layout: map.layout_name().to_string(),
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
