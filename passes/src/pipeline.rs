//! The pass pipeline: every pass, in the order it runs.
//!
//! | step | pass | does |
//! | --- | --- | --- |
//! | `dce` | [`dce`] | drops nodes no output needs |
//! | `cse` | [`cse`] | merges duplicate computations |
//! | `simplify` | [`simplify`] | folds views and split-then-join data movement |
//! | `conv1x1_as_mm` | [`conv1x1`] | 1×1 convs become linears over the channels-last view |
//! | `conv_im2col` | [`conv_im2col`] | the other convs become an im2col gather and a linear |
//! | `fuse_qkv` | [`fuse_qkv`] | linears sharing an input become one wide linear (e-graph) |
//! | `fp8` | [`fp8`], [`fp8_attention`] | dynamic fp8 quantization of selected linears (and attention, if the policy says so) |
//! | `hoist_weights` | [`hoist_weights`] | weight-only work moves to load time |
//! | `fusion` | [`fusion`](crate::fusion) | groups the remaining ops into kernels (a plan, no rewrite) |
//!
//! Steps switched off in [`PassOptions`] still appear (and can be dumped
//! after); they leave the graph as it is. Every step's result is verified.

use std::collections::BTreeMap;
use std::fmt::Write;

use fluxc_artifact::{Fp8Format, WeightSource};
use fluxc_ir::{print_graph, verify, Graph, IrError};

use crate::fusion::{plan_fusion, FusionPlan};
use crate::hoist_weights::hoist_weights;
use crate::{
    conv1x1, conv_im2col, cse, dce, fp8, fp8_attention, fuse_qkv, simplify, Fp8Mode, PassOptions,
};

/// One step of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Dead code elimination.
    Dce,
    /// Common subexpression elimination.
    Cse,
    /// View and data-movement simplification.
    Simplify,
    /// conv_1x1_as_mm.
    Conv1x1AsMm,
    /// Convolutions as im2col and a GEMM (always on: codegen has no
    /// direct convolution).
    ConvIm2col,
    /// q/k/v fusion.
    FuseQkv,
    /// fp8 insertion.
    Fp8,
    /// Load-time weight hoisting.
    HoistWeights,
    /// Kernel fusion planning.
    Fusion,
}

/// The steps in order.
pub const STEPS: [Step; 9] = [
    Step::Dce,
    Step::Cse,
    Step::Simplify,
    Step::Conv1x1AsMm,
    Step::ConvIm2col,
    Step::FuseQkv,
    Step::Fp8,
    Step::HoistWeights,
    Step::Fusion,
];

impl Step {
    /// The name used by `--dump-after`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Dce => "dce",
            Step::Cse => "cse",
            Step::Simplify => "simplify",
            Step::Conv1x1AsMm => "conv1x1_as_mm",
            Step::ConvIm2col => "conv_im2col",
            Step::FuseQkv => "fuse_qkv",
            Step::Fp8 => "fp8",
            Step::HoistWeights => "hoist_weights",
            Step::Fusion => "fusion",
        }
    }

    /// The step called `name`.
    pub fn from_name(name: &str) -> Result<Step, PassError> {
        STEPS
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| PassError::UnknownStep(name.to_string()))
    }
}

/// Why the pipeline failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PassError {
    /// A pass produced or met an invalid graph.
    #[error("pass `{step}` failed: {source}")]
    Pass {
        /// The step.
        step: &'static str,
        /// What went wrong.
        source: IrError,
    },
    /// `--dump-after` named no step.
    #[error("unknown pass `{0}`; the passes are: {names}", names = step_names())]
    UnknownStep(String),
}

fn step_names() -> String {
    STEPS.map(Step::name).join(", ")
}

/// The pipeline's result.
#[derive(Clone, Debug)]
pub struct Optimized {
    /// The optimized graph.
    pub graph: Graph,
    /// How each weight input of `graph` is derived from the original
    /// (diffusers-named) weights; identity for untouched weights.
    pub weights: BTreeMap<String, WeightSource>,
    /// The kernel grouping codegen follows.
    pub fusion: FusionPlan,
    /// One line per step saying what it did.
    pub log: Vec<String>,
    /// [`PassOptions::fp8_fast_accumulation`], for codegen.
    pub fp8_fast_accumulation: bool,
    /// [`PassOptions::cudnn_convolutions`], for codegen.
    pub cudnn_convolutions: bool,
    /// [`PassOptions::residual_in_gemm`], for codegen.
    pub residual_in_gemm: bool,
}

/// Runs the whole pipeline on `graph`.
pub fn optimize(graph: Graph, opts: &PassOptions) -> Result<Optimized, PassError> {
    run(graph, opts, None).map(|(optimized, _)| optimized)
}

/// Runs the whole pipeline and also returns the dump taken right after
/// step `dump_after` (the IR, plus the derived weights after
/// `hoist_weights`, or the fusion plan after `fusion`).
pub fn optimize_with_dump(
    graph: Graph,
    opts: &PassOptions,
    dump_after: &str,
) -> Result<(Optimized, String), PassError> {
    let step = Step::from_name(dump_after)?;
    let (optimized, dump) = run(graph, opts, Some(step))?;
    Ok((optimized, dump.unwrap_or_default()))
}

fn run(
    mut graph: Graph,
    opts: &PassOptions,
    dump_after: Option<Step>,
) -> Result<(Optimized, Option<String>), PassError> {
    let mut weights = BTreeMap::new();
    let mut fusion = None;
    let mut log = Vec::new();
    let mut dump = None;
    for step in STEPS {
        let at = |source| PassError::Pass {
            step: step.name(),
            source,
        };
        let summary = match step {
            Step::Dce => format!("removed {} nodes", dce::eliminate_dead_code(&mut graph)),
            Step::Cse if opts.cse => format!(
                "merged {} nodes",
                cse::eliminate_common_subexpressions(&mut graph).map_err(at)?
            ),
            Step::Simplify if opts.simplify => {
                format!(
                    "replaced {} nodes",
                    simplify::simplify(&mut graph).map_err(at)?
                )
            }
            Step::Conv1x1AsMm if opts.conv1x1_as_mm => format!(
                "rewrote {} convolutions",
                conv1x1::conv1x1_as_mm(&mut graph).map_err(at)?
            ),
            Step::ConvIm2col => format!(
                "rewrote {} convolutions",
                conv_im2col::conv_im2col(&mut graph).map_err(at)?
            ),
            Step::FuseQkv if opts.fuse_qkv => {
                let r = fuse_qkv::fuse_shared_input_linears(&mut graph, opts.fuse_qkv_min_rows)
                    .map_err(at)?;
                let one_row = fuse_qkv::stack_one_row_linears(&mut graph).map_err(at)?;
                if one_row > 0 {
                    // The parts' own slices (modulation chunks) read the
                    // stacked output directly.
                    simplify::simplify(&mut graph).map_err(at)?;
                }
                format!(
                    "{} linears -> {} (e-graph stopped: {}); {one_row} one-row linears stacked",
                    r.linears_before, r.linears_after, r.stop_reason
                )
            }
            Step::Fp8 if opts.fp8 != Fp8Mode::Off => {
                let linears =
                    fp8::insert_fp8(&mut graph, opts.fp8, &opts.fp8_policy).map_err(at)?;
                let attention = if opts.fp8_policy.attention {
                    let n =
                        fp8_attention::insert_fp8_attention(&mut graph, opts.fp8, &opts.fp8_policy)
                            .map_err(at)?;
                    format!("{n} attentions (per tensor)")
                } else {
                    "attention off".to_string()
                };
                format!("quantized {linears} linears ({:?}), {attention}", opts.fp8)
            }
            Step::HoistWeights => {
                weights = hoist_weights(&mut graph).map_err(at)?;
                let derived = weights
                    .iter()
                    .filter(|(n, s)| **s != WeightSource::tensor(n.as_str()))
                    .count();
                format!("{derived} weights derived at load time")
            }
            Step::Fusion => {
                let plan = plan_fusion(&graph, opts.epilogue_fusion).map_err(at)?;
                let summary = format!(
                    "{} groups, {} refused fusions (epilogue fusion {})",
                    plan.groups.len(),
                    plan.refusals.len(),
                    if opts.epilogue_fusion { "on" } else { "off" }
                );
                fusion = Some(plan);
                summary
            }
            _ => "off".to_string(),
        };
        verify(&graph).map_err(at)?;
        log.push(format!("{}: {summary}", step.name()));
        if dump_after == Some(step) {
            dump = Some(dump_text(step, &graph, &weights, fusion.as_ref()).map_err(at)?);
        }
    }
    let fusion = fusion.expect("the fusion step always runs");
    Ok((
        Optimized {
            graph,
            weights,
            fusion,
            log,
            fp8_fast_accumulation: opts.fp8_fast_accumulation,
            cudnn_convolutions: opts.cudnn_convolutions,
            residual_in_gemm: opts.residual_in_gemm,
        },
        dump,
    ))
}

fn dump_text(
    step: Step,
    graph: &Graph,
    weights: &BTreeMap<String, WeightSource>,
    fusion: Option<&FusionPlan>,
) -> Result<String, IrError> {
    if let (Step::Fusion, Some(plan)) = (step, fusion) {
        return plan.dump(graph);
    }
    let mut text = print_graph(graph)?;
    if step == Step::HoistWeights {
        text.push_str("\n# weights derived at load time\n");
        for (name, source) in weights {
            if *source != WeightSource::tensor(name.as_str()) {
                writeln!(text, "{name} = {}", describe(source)).unwrap();
            }
        }
    }
    Ok(text)
}

/// One-line form of a derivation for dumps: `concat(a, b)`,
/// `quantize_e4m3/row(w)`, ...
fn describe(source: &WeightSource) -> String {
    let granularity = |per_row: bool| if per_row { "/row" } else { "" };
    match source {
        WeightSource::Tensor { name } => name.clone(),
        WeightSource::Rows { of, start, len } => {
            format!("rows({}, {start}..{})", describe(of), start + len)
        }
        WeightSource::SwapHalves { of } => format!("swap_halves({})", describe(of)),
        WeightSource::Concat { parts } => {
            let parts: Vec<String> = parts.iter().map(describe).collect();
            format!("concat({})", parts.join(", "))
        }
        WeightSource::Reshape { of, shape } => format!("reshape({}, {shape:?})", describe(of)),
        WeightSource::Permute { of, perm } => format!("permute({}, {perm:?})", describe(of)),
        WeightSource::Fp8Quantize {
            of,
            format,
            per_row,
        } => format!(
            "quantize_{}{}({})",
            format_name(*format),
            granularity(*per_row),
            describe(of)
        ),
        WeightSource::Fp8Scale {
            of,
            format,
            per_row,
        } => format!(
            "scale_{}{}({})",
            format_name(*format),
            granularity(*per_row),
            describe(of)
        ),
    }
}

fn format_name(format: Fp8Format) -> &'static str {
    match format {
        Fp8Format::E4m3 => "e4m3",
        Fp8Format::E5m2 => "e5m2",
    }
}
