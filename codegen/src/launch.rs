//! The tuning surface of the generated kernels.
//!
//! Each kernel kind of `kernels.rs` has a launch configuration the
//! autotuner may change without changing what the kernel computes
//! ([`LaunchConfig`]); this module declares the space of each kind
//! (fields and values in `fluxc_autotune` terms) and the entry points a
//! tuner needs: the distinct kernels of an optimized graph with their
//! parameters ([`tunable_kernels`]), a kernel rendered under another
//! configuration ([`variant`]), a compilable translation unit of several
//! variants ([`translation_unit`]), and [`generate_with`](crate::generate_with)
//! to emit the artifact with the chosen configurations.
//!
//! Spaces:
//! - pointwise, whole-tensor scale, GroupNorm-normalizing and attention
//!   softmax kernels: `block_threads` ∈ {64, 128, 256, 512, 1024};
//! - GroupNorm statistics kernels: their one block size (a whole number of
//!   pixels and warps, fixed by the channels);
//! - row kernels: `block_threads` as above and `threads_per_row` ∈ {1, 2,
//!   4, …, 1024}. Configurations whose row does not fit in registers (more
//!   than 64 values per thread) or whose threads per row exceed the block
//!   are rejected when rendered;
//! - the tensor-core attention kernel, per distinct problem
//!   ([`tunable_attention`]): keys per tile `block_n` ∈ {128, 192} and
//!   K/V stages ∈ {2, 3} ([`attention::space`]; configurations over the
//!   shared-memory limit are rejected when rendered).

use fluxc_artifact::{AttentionOperands, ElemType};
use fluxc_autotune::{Config, ConfigSpace, Field};
use fluxc_passes::pipeline::Optimized;

use crate::attention::{self, render_attention_with, AttentionConfig, AttentionKernel};

use crate::kernels::{self, KernelSource, LaunchConfig, Recipe, NAME};
use crate::{elem_type, lower, CodegenError};

/// Block sizes every kind may use.
const BLOCKS: [i64; 5] = [64, 128, 256, 512, 1024];

/// The configuration space of `kernel`'s kind.
pub fn space(kernel: &KernelSource) -> ConfigSpace {
    let blocks = Field::new("block_threads", BLOCKS);
    match kernel.recipe {
        Recipe::Row { .. } => ConfigSpace::new(vec![
            blocks,
            Field::powers_of_two("threads_per_row", 1, 1024),
        ]),
        Recipe::Pointwise { .. }
        | Recipe::TensorScale { .. }
        | Recipe::GroupNormApply(_)
        | Recipe::ScaledSoftmax(_) => ConfigSpace::new(vec![blocks]),
        // Its block is fixed by the channels (a whole number of pixels).
        Recipe::GroupStats(_) => ConfigSpace::new(vec![Field::new(
            "block_threads",
            [i64::from(kernel.config.block_threads)],
        )]),
    }
}

/// `config` of `space` (from [`space`]) as a launch configuration.
pub fn launch_config(space: &ConfigSpace, config: &Config) -> LaunchConfig {
    let values = space.values(config);
    LaunchConfig {
        block_threads: values[0] as u32,
        threads_per_row: values.get(1).copied().unwrap_or(0) as u32,
    }
}

/// The point of `space` that `launch` is, if the space has it.
pub fn config_of(space: &ConfigSpace, launch: LaunchConfig) -> Option<Config> {
    let mut values = vec![i64::from(launch.block_threads)];
    if space.fields.len() > 1 {
        values.push(i64::from(launch.threads_per_row));
    }
    space.config_of(&values)
}

/// One parameter of a kernel, as a benchmark allocates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// Element type.
    pub dtype: ElemType,
    /// Elements.
    pub elements: u64,
    /// Whether the kernel writes it.
    pub written: bool,
}

/// A distinct generated kernel of a graph, as the tuner sees it.
#[derive(Clone, Debug)]
pub struct TunableKernel {
    /// The kernel as rendered by default (its source identifies it:
    /// identical kernels of different blocks are one).
    pub default: KernelSource,
    /// Its configuration space.
    pub space: ConfigSpace,
    /// The default configuration in that space.
    pub default_config: Config,
    /// Its parameters, in order (scratch words not included).
    pub params: Vec<ParamSpec>,
    /// How many steps of the forward launch it.
    pub launches: usize,
}

/// The distinct generated kernels of `optimized`, in order of first use.
pub fn tunable_kernels(optimized: &Optimized) -> Result<Vec<TunableKernel>, CodegenError> {
    let graph = &optimized.graph;
    let pending = lower::lower(optimized)?;
    let mut out: Vec<TunableKernel> = Vec::new();
    for step in pending {
        let lower::PendingStep::Kernel(k) = step else {
            continue;
        };
        if let Some(seen) = out.iter_mut().find(|t| t.default.source == k.source) {
            seen.launches += 1;
            continue;
        }
        let space = space(&k);
        let default_config = config_of(&space, k.config).ok_or_else(|| {
            CodegenError::Invalid(format!(
                "a kernel's default launch {:?} lies outside its space {space}",
                k.config
            ))
        })?;
        let params = k
            .params
            .iter()
            .map(|p| {
                Ok(ParamSpec {
                    dtype: elem_type(p.buf.dtype(graph))?,
                    elements: p.buf.elements(graph),
                    written: p.written,
                })
            })
            .collect::<Result<Vec<_>, CodegenError>>()?;
        out.push(TunableKernel {
            default: k,
            space,
            default_config,
            params,
            launches: 1,
        });
    }
    Ok(out)
}

/// `kernel` rendered under `config` of its space; an invalid configuration
/// is [`CodegenError::Unsupported`] (the tuner rejects it).
pub fn variant(
    optimized: &Optimized,
    kernel: &TunableKernel,
    config: &Config,
) -> Result<KernelSource, CodegenError> {
    let launch = launch_config(&kernel.space, config);
    kernels::render(&optimized.graph, &kernel.default.recipe, Some(launch))
}

/// A distinct problem of the tensor-core attention kernel in a graph, as
/// the tuner sees it.
#[derive(Clone, Debug)]
pub struct TunableAttention {
    /// `[batch, heads, seq_q, seq_kv, head_dim]`: what a choice is keyed by.
    pub dims: [u32; 5],
    /// The score scale.
    pub scale: f32,
    /// The kernel in its default configuration.
    pub default: AttentionKernel,
    /// The space of tile configurations ([`attention::space`]).
    pub space: ConfigSpace,
    /// The default configuration in that space.
    pub default_config: Config,
    /// How many steps of the forward run it.
    pub launches: usize,
}

/// The distinct problems of the tensor-core attention kernel in
/// `optimized`, in order of first use (the CUDA-core and decomposed
/// attentions have no tile configuration to tune).
pub fn tunable_attention(optimized: &Optimized) -> Result<Vec<TunableAttention>, CodegenError> {
    let pending = lower::lower(optimized)?;
    let mut out: Vec<TunableAttention> = Vec::new();
    for step in pending {
        let lower::PendingStep::Attention {
            kernel,
            dims,
            scale,
            ..
        } = step
        else {
            continue;
        };
        if !matches!(kernel.operands, AttentionOperands::TensorMaps { .. }) {
            continue;
        }
        if let Some(seen) = out.iter_mut().find(|t| t.dims == dims) {
            seen.launches += 1;
            continue;
        }
        let space = attention::space();
        let default_config =
            attention::config_of(&space, AttentionConfig::default()).ok_or_else(|| {
                CodegenError::Invalid(
                    "the default attention configuration lies outside its space".into(),
                )
            })?;
        out.push(TunableAttention {
            dims,
            scale,
            default: kernel,
            space,
            default_config,
            launches: 1,
        });
    }
    Ok(out)
}

/// The attention kernel of `problem` under `config` of its space; an
/// invalid configuration (shared memory over the limit) is
/// [`CodegenError::Unsupported`] (the tuner rejects it).
pub fn attention_variant(
    problem: &TunableAttention,
    config: &Config,
) -> Result<AttentionKernel, CodegenError> {
    let config = attention::config_from(&problem.space, config);
    render_attention_with(problem.dims[4] as usize, config).map_err(CodegenError::Unsupported)
}

/// One CUDA translation unit (the kernel prelude, then every kernel under
/// its given `extern "C"` name): what a benchmark compiles with NVRTC.
pub fn translation_unit(kernels: &[(String, &KernelSource)]) -> String {
    let mut cu = String::from(include_str!("../kernels/prelude.cuh"));
    for (name, k) in kernels {
        cu.push('\n');
        cu.push_str(&k.source.replace(NAME, name));
    }
    cu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_configs_round_trip_through_spaces() {
        let row = ConfigSpace::new(vec![
            Field::new("block_threads", BLOCKS),
            Field::powers_of_two("threads_per_row", 1, 1024),
        ]);
        let launch = LaunchConfig {
            block_threads: 512,
            threads_per_row: 128,
        };
        let config = config_of(&row, launch).unwrap();
        assert_eq!(launch_config(&row, &config), launch);
        let pointwise = ConfigSpace::new(vec![Field::new("block_threads", BLOCKS)]);
        let launch = LaunchConfig {
            block_threads: 128,
            threads_per_row: 0,
        };
        let config = config_of(&pointwise, launch).unwrap();
        assert_eq!(launch_config(&pointwise, &config), launch);
        assert!(config_of(
            &pointwise,
            LaunchConfig {
                block_threads: 96,
                threads_per_row: 0
            }
        )
        .is_none());
    }
}
