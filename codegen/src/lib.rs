//! Code generation: the optimized graph and its fusion plan become an
//! artifact — CUDA kernels, a static memory plan and an ordered schedule of
//! typed steps — that the runtime replays as one CUDA graph.
//!
//! The stages, each in its own module: `lower` turns fusion groups into
//! steps (generated kernels via `kernels` and `emit`, cuBLASLt GEMMs, the
//! `attention` kernels, bf16 and fp8 (`attention_fp8`)); `memory` places
//! every activation in one arena by liveness; this module assigns buffers,
//! names kernels, and assembles the schedule and manifest; `write` puts the
//! artifact on disk.

pub mod attention;
pub mod attention_fp8;
mod buffers;
mod concat;
mod emit;
mod gated;
mod gemv;
mod group_norm;
mod kernels;
mod lanes;
pub mod launch;
mod lower;
pub mod memory;
mod softmax;
mod v_rows;
mod write;

use std::collections::{BTreeMap, HashMap};

use fluxc_artifact::{
    content_hash, Arg, Attention, AttentionOperands, AttentionScales, Binding, Buffer,
    CheckpointLayout, Conv, ElemType, Gemm, GemmEpilogue, GemmScales as ScaleSpec, Launch,
    Manifest, Region, ScaleMode, Schedule, Step, Tensor, WeightEntry, WeightSource, FORMAT_VERSION,
};
use fluxc_ir::{print_graph, DType, Graph, NodeId, Op};
use fluxc_passes::pipeline::Optimized;

pub use attention::AttentionConfig;
use buffers::Buf;
pub use kernels::{KernelSource, LaunchConfig};
use lower::{storage_of, FixedLaunch, PendingStep};
use v_rows::VRows;
pub use write::{check_output_dir, write_artifact, WriteError};

/// The architecture kernels are compiled for.
pub const ARCH: &str = "sm_90a";

/// cuBLASLt workspace (NVIDIA recommends 32 MiB on Hopper).
pub const GEMM_WORKSPACE_BYTES: u64 = 32 << 20;

/// Why code generation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodegenError {
    /// The graph uses something codegen cannot emit yet.
    #[error("not supported by codegen yet: {0}")]
    Unsupported(String),
    /// A size does not fit the kernels' index types.
    #[error("too large for generated kernels: {0}")]
    TooLarge(String),
    /// The graph or plan is inconsistent (a compiler bug).
    #[error("internal codegen error: {0}")]
    Invalid(String),
    /// The graph could not be walked.
    #[error(transparent)]
    Ir(#[from] fluxc_ir::IrError),
}

/// What the caller provides beyond the optimized graph.
#[derive(Clone, Debug)]
pub struct CodegenOptions {
    /// `[model] name`.
    pub model_name: String,
    /// Checkpoint layouts, each with the derivation of every graph weight
    /// from that layout's stored tensors; layouts that miss a weight are left
    /// out of the manifest.
    pub layouts: Vec<(CheckpointLayout, BTreeMap<String, WeightSource>)>,
    /// Let buffers with disjoint lifetimes share arena bytes (off keeps every
    /// intermediate inspectable, for tests).
    pub reuse_memory: bool,
}

/// A generated artifact, in memory.
#[derive(Clone, Debug)]
pub struct Generated {
    /// `manifest.json`.
    pub manifest: Manifest,
    /// `schedule.json`.
    pub schedule: Schedule,
    /// `kernels.cu`.
    pub kernels_cu: String,
    /// `graph.txt`.
    pub graph_txt: String,
    /// `fusion.txt`.
    pub fusion_txt: String,
    /// Which node each buffer holds, by buffer id (for tests that compare
    /// buffers with the interpreter); `None` for codegen's temporaries, and
    /// scratch buffers (ids past the end) hold none.
    pub buffer_nodes: Vec<Option<NodeId>>,
}

/// Generates the artifact for `optimized`.
pub fn generate(optimized: &Optimized, opts: &CodegenOptions) -> Result<Generated, CodegenError> {
    generate_with(optimized, opts, &Choices::default())
}

/// What tuning chose, for [`generate_with`]: `kernel` sees each generated
/// kernel as rendered by default and may return another launch
/// configuration; `attention` sees each tensor-core attention problem
/// (`[batch, heads, seq_q, seq_kv, head_dim]`) and may return another tile
/// configuration. See [`launch`] for tuning.
pub struct Choices<'a> {
    /// Launch configurations of generated kernels.
    pub kernel: &'a dyn Fn(&kernels::KernelSource) -> Option<LaunchConfig>,
    /// Tile configurations of the attention kernel.
    pub attention: &'a dyn Fn(&[u32; 5]) -> Option<AttentionConfig>,
}

impl Default for Choices<'_> {
    /// Every default.
    fn default() -> Self {
        Choices {
            kernel: &|_| None,
            attention: &|_| None,
        }
    }
}

/// [`generate`], with every kernel that `choices` picks a configuration for
/// rendered under it.
pub fn generate_with(
    optimized: &Optimized,
    opts: &CodegenOptions,
    choices: &Choices,
) -> Result<Generated, CodegenError> {
    let graph = &optimized.graph;
    let mut pending = lower::lower(optimized)?;
    for step in &mut pending {
        match step {
            PendingStep::Kernel(k) => {
                if let Some(config) = (choices.kernel)(k) {
                    *k = kernels::render(graph, &k.recipe, Some(config))?;
                }
            }
            PendingStep::Attention {
                kernel, dims, grid, ..
            } if matches!(kernel.operands, AttentionOperands::TensorMaps { .. }) => {
                if let Some(config) = (choices.attention)(dims) {
                    *kernel = attention::render_attention_with(dims[4] as usize, config)
                        .map_err(CodegenError::Unsupported)?;
                    *grid = attention::grid(kernel, dims[0], dims[1], dims[2]);
                }
            }
            _ => {}
        }
    }
    let (pending, in_place) = concat::in_place(graph, pending);
    // A part written in place is its concatenation's bytes.
    let home = |b: Buf| in_place.get(&b).map_or(b, |&(c, _)| c);
    let (unique_kernels, kernel_names) = lower::name_kernels(graph, &pending);
    let mut values = lower::materialized(graph, &pending);
    values.retain(|b| !in_place.contains_key(b));

    // Buffers: weights in their region, the rest in the arena by liveness.
    let number = value_numbers(graph)?;
    let mut buffer_of: HashMap<Buf, u32> = HashMap::new();
    let mut buffers = Vec::new();
    let mut lifetimes = Vec::new();
    let mut arena_ids = Vec::new();
    let mut weight_bytes = 0u64;
    let last_step = pending.len();
    let mut first_use: HashMap<Buf, usize> = HashMap::new();
    let mut last_use: HashMap<Buf, usize> = HashMap::new();
    for (s, step) in pending.iter().enumerate() {
        for id in step.reads().into_iter().chain(step.writes()) {
            first_use.entry(home(id)).or_insert(s);
            last_use.insert(home(id), s);
        }
    }
    let outputs: Vec<Buf> = graph
        .outputs()
        .iter()
        .map(|(_, o)| Buf::Node(storage_of(graph, *o)))
        .collect();
    for &id in &values {
        let dtype = elem_type(id.dtype(graph))?;
        let bytes = id.elements(graph) * dtype.size_bytes();
        let op = id.node().map(|n| &graph.node(n).op);
        let region = if op.is_some_and(Op::is_weight) {
            Region::Weights
        } else {
            Region::Arena
        };
        let id_u32 = buffers.len() as u32;
        let offset = if region == Region::Weights {
            let offset = weight_bytes;
            weight_bytes += memory::align(bytes);
            offset
        } else {
            let is_input = matches!(op, Some(Op::Input { .. }));
            let first = if is_input {
                0
            } else {
                first_use.get(&id).copied().unwrap_or(0)
            };
            // Inputs stay intact to the end, so that a forward launched
            // again without new inputs (benchmark replays, an app's second
            // run) reads the same ones rather than what reused their bytes.
            let last = if is_input || outputs.contains(&id) {
                last_step
            } else {
                last_use.get(&id).copied().unwrap_or(first)
            };
            arena_ids.push(buffers.len());
            lifetimes.push(memory::Lifetime { bytes, first, last });
            0
        };
        buffers.push(Buffer {
            id: id_u32,
            name: describe_buf(graph, id, &number),
            dtype,
            shape: id.dims(graph).iter().map(|&d| d as u64).collect(),
            region,
            offset,
            bytes,
        });
        buffer_of.insert(id, id_u32);
    }
    let (offsets, arena_bytes) = memory::plan(&lifetimes, opts.reuse_memory);
    for (k, &b) in arena_ids.iter().enumerate() {
        buffers[b].offset = offsets[k];
    }

    let tensor_of = |b: Buf| match in_place.get(&b) {
        Some(&(c, offset)) => Tensor::of(buffer_of[&c]).plus(offset),
        None => Tensor::of(buffer_of[&b]),
    };
    let tensor = |id: NodeId| tensor_of(Buf::Node(id));
    let mut scratch_bytes = 0u64;
    let mut steps = Vec::with_capacity(pending.len());
    let mut template_sources: BTreeMap<String, String> = BTreeMap::new();
    for (s, step) in pending.iter().enumerate() {
        steps.push(match step {
            PendingStep::Kernel(k) => {
                let mut args: Vec<Arg> = k
                    .params
                    .iter()
                    .map(|p| Arg::Ptr(tensor_of(p.buf).plus(p.offset)))
                    .collect();
                if k.scratch_words > 0 {
                    args.push(Arg::Ptr(Tensor::of(buffers.len() as u32)));
                    let scratch = Buffer::new(
                        buffers.len() as u32,
                        format!("scratch of step {s} ({})", kernel_names[&s]),
                        ElemType::I32,
                        vec![u64::from(k.scratch_words)],
                        Region::Scratch,
                        scratch_bytes,
                    );
                    scratch_bytes += memory::align(scratch.bytes);
                    buffers.push(scratch);
                }
                Step::Launch(Launch {
                    kernel: kernel_names[&s].clone(),
                    grid: k.grid,
                    block: k.block,
                    shared_bytes: 0,
                    args,
                })
            }
            PendingStep::Gemm {
                node,
                x,
                w,
                bias,
                out,
                gelu,
                rows,
                k,
                n,
                dtype,
                out_dtype,
                scales,
                residual,
                gated,
            } => Step::Gemm(Gemm {
                name: describe(graph, *node, &number),
                dtype: elem_type(*dtype)?,
                trans_a: true,
                trans_b: false,
                m: *n,
                n: *rows,
                k: *k,
                a: tensor(*w),
                lda: *k,
                b: tensor(*x),
                ldb: *k,
                d: tensor(*out),
                ldd: *n,
                // A gated residual's bias replaces the linear's.
                bias: match gated {
                    Some(g) => Some(tensor_of(Buf::Temp(g.bias))),
                    None => bias.map(tensor),
                },
                epilogue: match (bias, gelu) {
                    (Some(_), true) => GemmEpilogue::GeluBias,
                    (Some(_), false) => GemmEpilogue::Bias,
                    (None, _) => GemmEpilogue::Default,
                },
                d_dtype: out_dtype.map(elem_type).transpose()?,
                scales: scales.map(|sc| ScaleSpec {
                    mode: if sc.per_row {
                        ScaleMode::OuterVector
                    } else {
                        ScaleMode::Tensor
                    },
                    // A is the weight (one scale per row of D), B the input;
                    // a gated residual's scale replaces the weight's.
                    a: match gated {
                        Some(g) => tensor_of(Buf::Temp(g.scale)),
                        None => tensor(sc.w),
                    },
                    b: tensor(sc.x),
                }),
                fast_accumulation: scales.is_some() && optimized.fp8_fast_accumulation,
                algo: None,
                c: residual.map(tensor),
            }),
            PendingStep::GateScale { kernel, jobs } => {
                let mut args = Vec::with_capacity(5 * jobs.len());
                for job in jobs {
                    let gate_at = tensor(job.gate.0)
                        .plus(job.gate.1 * elem_type(graph.ty(job.gate.0).dtype)?.size_bytes());
                    args.extend([
                        Arg::Ptr(tensor(job.w_scale)),
                        Arg::Ptr(tensor(job.bias)),
                        Arg::Ptr(gate_at),
                        Arg::Ptr(tensor_of(Buf::Temp(job.scale))),
                        Arg::Ptr(tensor_of(Buf::Temp(job.gated_bias))),
                    ]);
                }
                fixed_launch(kernel, args, &mut template_sources)
            }
            PendingStep::Conv {
                node,
                x,
                w,
                bias,
                out,
                dtype,
                input,
                filter,
                padding,
                stride,
                output,
            } => Step::Conv(Conv {
                name: describe(graph, *node, &number),
                dtype: elem_type(*dtype)?,
                x: tensor(*x),
                w: tensor(*w),
                y: tensor(*out),
                bias: bias.map(tensor),
                input: *input,
                filter: *filter,
                padding: *padding,
                stride: *stride,
                output: *output,
            }),
            PendingStep::Product(p) => {
                let at = |o: &lower::Operand| -> Result<Tensor, CodegenError> {
                    Ok(tensor_of(o.buf).plus(o.offset * elem_type(p.dtype)?.size_bytes()))
                };
                Step::Gemm(Gemm {
                    name: format!("{} ({})", describe(graph, p.node, &number), p.what),
                    dtype: elem_type(p.dtype)?,
                    trans_a: p.trans_a,
                    trans_b: p.trans_b,
                    m: p.m,
                    n: p.n,
                    k: p.k,
                    a: at(&p.a)?,
                    lda: p.a.ld,
                    b: at(&p.b)?,
                    ldb: p.b.ld,
                    d: at(&p.d)?,
                    ldd: p.d.ld,
                    bias: None,
                    epilogue: GemmEpilogue::Default,
                    d_dtype: None,
                    scales: None,
                    fast_accumulation: false,
                    algo: None,
                    c: None,
                })
            }
            PendingStep::Attention {
                node,
                q,
                k,
                v,
                scales,
                kernel,
                grid,
                dims,
                scale,
            } => {
                template_sources.insert(kernel.name.clone(), kernel.source.clone());
                Step::Attention(Attention {
                    kernel: kernel.name.clone(),
                    operands: kernel.operands,
                    grid: *grid,
                    block: [kernel.threads, 1, 1],
                    shared_bytes: kernel.shared_bytes,
                    q: tensor(*q),
                    k: tensor(*k),
                    v: tensor_of(*v),
                    out: tensor(*node),
                    batch: dims[0],
                    heads: dims[1],
                    seq_q: dims[2],
                    seq_kv: dims[3],
                    head_dim: dims[4],
                    scale: *scale,
                    scales: scales.map(|[q, k, v]| AttentionScales {
                        q: tensor(q),
                        k: tensor(k),
                        v: tensor(v),
                    }),
                    split: kernel.split.clone(),
                })
            }
            PendingStep::VLayout {
                kernel,
                v,
                scale,
                vt,
                seq_kv,
                heads,
            } => {
                let mut args = vec![
                    Arg::Ptr(tensor(*scale)),
                    Arg::Ptr(tensor_of(Buf::Temp(*vt))),
                    int_arg(*seq_kv, "a V layout's keys")?,
                    int_arg(*heads, "a V layout's heads")?,
                ];
                // Two row sources; a contiguous v is its own second one.
                let (first, second) = match v.as_slice() {
                    [one] => (one, one),
                    [first, second] => (first, second),
                    _ => {
                        return Err(CodegenError::Invalid(format!(
                            "a V layout over {} row sources",
                            v.len()
                        )))
                    }
                };
                let bf16 = DType::BF16.size_bytes() as u64;
                let at = |rows: &VRows| Arg::Ptr(tensor(rows.node).plus(rows.offset * bf16));
                args.extend([
                    at(first),
                    int_arg(first.rows, "a V layout's rows")?,
                    int_arg(first.row_stride, "a V layout's row stride")?,
                    int_arg(first.batch_stride, "a V layout's batch stride")?,
                    at(second),
                    int_arg(second.row_stride, "a V layout's row stride")?,
                    int_arg(second.batch_stride, "a V layout's batch stride")?,
                ]);
                fixed_launch(kernel, args, &mut template_sources)
            }
            PendingStep::Gemv {
                kernel,
                x,
                w,
                bias,
                out,
                n,
                scales,
            } => {
                // Without a bias the kernel never reads its pointer.
                let bias = Arg::Ptr(tensor(bias.unwrap_or(*x)));
                let outputs = [
                    Arg::Ptr(tensor(*out)),
                    int_arg(*n, "a one-row linear's outputs")?,
                ];
                let args = match scales {
                    None => [Arg::Ptr(tensor(*x)), Arg::Ptr(tensor(*w)), bias]
                        .into_iter()
                        .chain(outputs)
                        .collect(),
                    Some([xs, ws]) => [*x, *xs, *w, *ws]
                        .map(|t| Arg::Ptr(tensor(t)))
                        .into_iter()
                        .chain([bias])
                        .chain(outputs)
                        .collect(),
                };
                fixed_launch(kernel, args, &mut template_sources)
            }
        });
    }

    let binding = |name: &str, id: NodeId| Binding {
        name: name.to_string(),
        buffer: buffer_of[&Buf::Node(id)],
    };
    let inputs = graph
        .inputs()
        .into_iter()
        .filter(|id| buffer_of.contains_key(&Buf::Node(*id)) && !graph.node(*id).op.is_weight())
        .map(|id| match &graph.node(id).op {
            Op::Input { name, .. } => binding(name, id),
            _ => unreachable!("inputs are Input nodes"),
        })
        .collect();
    let outputs = graph
        .outputs()
        .iter()
        .map(|(name, id)| binding(name, storage_of(graph, *id)))
        .collect();
    let schedule = Schedule {
        arena_bytes,
        weight_bytes,
        scratch_bytes,
        gemm_workspace_bytes: GEMM_WORKSPACE_BYTES,
        buffers,
        inputs,
        outputs,
        steps,
    };
    schedule
        .validate()
        .map_err(|e| CodegenError::Invalid(e.to_string()))?;

    let kernels_cu = kernels_source(&template_sources, &unique_kernels);
    let schedule_json = schedule_json(&schedule)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        compiler: format!("fluxc {}", env!("CARGO_PKG_VERSION")),
        model_name: opts.model_name.clone(),
        content_hash: content_hash(schedule_json.as_bytes(), kernels_cu.as_bytes()),
        arch: ARCH.to_string(),
        layouts: Vec::new(),
        weights: Vec::new(),
    };
    let manifest = with_weights(manifest, graph, &schedule, &buffer_of, &opts.layouts);
    Ok(Generated {
        manifest,
        schedule,
        kernels_cu,
        graph_txt: print_graph(graph)?,
        fusion_txt: optimized.fusion.dump(graph)?,
        buffer_nodes: values.iter().map(|b| b.node()).collect(),
    })
}

/// `schedule.json` as written (pretty, with a trailing newline).
pub fn schedule_json(schedule: &Schedule) -> Result<String, CodegenError> {
    serde_json::to_string_pretty(schedule)
        .map(|s| s + "\n")
        .map_err(|e| CodegenError::Invalid(format!("cannot serialize the schedule: {e}")))
}

/// The weight table of the manifest: every weight buffer with its source in
/// each layout that has all of them.
fn with_weights(
    mut manifest: Manifest,
    graph: &Graph,
    schedule: &Schedule,
    buffer_of: &HashMap<Buf, u32>,
    layouts: &[(CheckpointLayout, BTreeMap<String, WeightSource>)],
) -> Manifest {
    let weights: Vec<(String, u32)> = graph
        .inputs()
        .into_iter()
        .filter_map(|id| match &graph.node(id).op {
            Op::Input { name, .. } if graph.node(id).op.is_weight() => {
                buffer_of.get(&Buf::Node(id)).map(|&b| (name.clone(), b))
            }
            _ => None,
        })
        .collect();
    let usable: Vec<&(CheckpointLayout, BTreeMap<String, WeightSource>)> = layouts
        .iter()
        .filter(|(_, sources)| weights.iter().all(|(name, _)| sources.contains_key(name)))
        .collect();
    manifest.layouts = usable.iter().map(|(layout, _)| layout.clone()).collect();
    manifest.weights = weights
        .into_iter()
        .map(|(name, buffer)| WeightEntry {
            sources: usable
                .iter()
                .map(|(layout, sources)| (layout.name.clone(), sources[&name].clone()))
                .collect(),
            name,
            buffer,
        })
        .collect();
    debug_assert!(manifest
        .weights
        .iter()
        .all(|w| (w.buffer as usize) < schedule.buffers.len()));
    manifest
}

/// The launch of a kernel rendered from a template, with `args`; its
/// source goes into `templates` (once per name).
fn fixed_launch(
    kernel: &FixedLaunch,
    args: Vec<Arg>,
    templates: &mut BTreeMap<String, String>,
) -> Step {
    templates.insert(kernel.name.clone(), kernel.source.clone());
    Step::Launch(Launch {
        kernel: kernel.name.clone(),
        grid: kernel.grid,
        block: [kernel.threads, 1, 1],
        shared_bytes: kernel.shared_bytes,
        args,
    })
}

/// `value` as a kernel's `int` argument, or [`CodegenError::TooLarge`]
/// naming `what` it is.
fn int_arg(
    value: impl Copy + TryInto<i32> + std::fmt::Display,
    what: &str,
) -> Result<Arg, CodegenError> {
    value
        .try_into()
        .map(Arg::I32)
        .map_err(|_| CodegenError::TooLarge(format!("{what}: {value}")))
}

/// `kernels.cu`: the prelude, the kernels rendered from hand-written
/// templates (attention, bf16 and fp8, fp8 attention's V layout, the
/// one-row linear), then every generated kernel in order of first use.
fn kernels_source(templates: &BTreeMap<String, String>, generated: &[String]) -> String {
    let mut cu = String::from(include_str!("../kernels/prelude.cuh"));
    for source in templates.values() {
        cu.push('\n');
        cu.push_str(source);
    }
    for source in generated {
        cu.push('\n');
        cu.push_str(source);
    }
    cu
}

/// The storage type of a dtype in the artifact.
pub fn elem_type(dtype: DType) -> Result<ElemType, CodegenError> {
    Ok(match dtype {
        DType::F32 => ElemType::F32,
        DType::BF16 => ElemType::Bf16,
        DType::F16 => ElemType::F16,
        DType::F8E4M3 => ElemType::F8e4m3,
        DType::F8E5M2 => ElemType::F8e5m2,
        DType::I32 => ElemType::I32,
        DType::I64 => ElemType::I64,
    })
}

/// `%n` numbers as `graph.txt` prints them.
fn value_numbers(graph: &Graph) -> Result<HashMap<NodeId, usize>, CodegenError> {
    Ok(graph
        .topo_order()?
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect())
}

/// [`describe`] for a graph value; `scores of %40 attention @mid_block` for
/// a temporary.
fn describe_buf(graph: &Graph, b: Buf, number: &HashMap<NodeId, usize>) -> String {
    match b {
        Buf::Node(id) => describe(graph, id, number),
        Buf::Temp(t) => format!("{} of {}", t.what.name(), describe(graph, t.of, number)),
    }
}

/// `%12 layer_norm @transformer_blocks.0.norm1`, or the input's name.
fn describe(graph: &Graph, id: NodeId, number: &HashMap<NodeId, usize>) -> String {
    let node = graph.node(id);
    match &node.op {
        Op::Input { name, .. } => name.clone(),
        op if node.scope.is_empty() => format!("%{} {}", number[&id], op.kind_name()),
        op => format!("%{} {} @{}", number[&id], op.kind_name(), node.scope),
    }
}
