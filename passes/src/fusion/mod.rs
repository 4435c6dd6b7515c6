//! Fusion planning: which compute nodes codegen emits as one kernel.
//!
//! The pass does not rewrite the graph. [`plan_fusion`] partitions the live
//! compute nodes into [`Group`]s — each one kernel, or one GEMM / attention
//! call with a fused epilogue — and records every fusion it considered and
//! refused as a [`Refusal`] with a reason, so `--dump-after fusion` explains
//! the kernel boundaries. The design follows TorchInductor's scheduler:
//! greedy, in topological order, on the structure the IR keeps (coarse
//! `LayerNorm`/`Attention`/`ApplyRope` ops, fine `Unary`/`Binary` ones).
//!
//! # What is planned
//!
//! - Only live nodes (`Graph::live_nodes`). Inputs and weights belong to no
//!   group.
//! - `Reshape` is a free view (same elements, same row-major order): it is no
//!   kernel and belongs to no group, and fusion looks through it — a node
//!   reading `reshape(p)` is treated as reading `p`.
//! - A group's kind comes from its anchor's [`OpClass`]: elementwise and
//!   movement ops → [`GroupKind::Pointwise`]; reductions (`LayerNorm`,
//!   `RmsNorm`, `GroupNorm`, `Softmax`, `DynamicScale`) →
//!   [`GroupKind::Reduction`]; `Linear`, `MatMul`, `Conv2d`, `ScaledLinear`
//!   → [`GroupKind::Gemm`]; `Attention` and `ScaledAttention` (fp8) →
//!   [`GroupKind::Attention`];
//!   `RopeTable`, `TimestepEmbedding` → [`GroupKind::Table`].
//!
//! # Rules (greedy, nodes in topological order)
//!
//! A node's *producer groups* are the groups of the compute nodes it reads
//! (through reshapes). They are tried most recent producer first, so the
//! gated residual `residual + gate·y` joins the GEMM that made `y`, not the
//! group that wrote the residual stream long before.
//!
//! 1. **Pointwise tails.** A pointwise node joins the first producer group
//!    that takes it:
//!    - a pointwise group with the same iteration space: the same output
//!      shape, or the same elements in the same row-major order seen through
//!      a reshape (equal element counts, no group value broadcast);
//!    - a reduction group as an epilogue when its output shape equals the
//!      reduction's input shape, the group's rows (LayerNorm → modulate,
//!      RmsNorm → ApplyRope, per-row DynamicScale → Quantize);
//!    - a GEMM group only when `epilogue_fusion` is on and its output shape
//!      equals the GEMM output (GELU, gate multiply, residual add);
//!    - a table group with the same shape;
//!    - never an attention group: attention epilogues are not fused.
//!
//!    Movement ops (permute, slice, concat, upsample) are pointwise but do
//!    not join reduction or GEMM groups: they read other rows/columns than
//!    they write, which a row-wise reduction kernel or a GEMM epilogue does
//!    not have at hand. If no group takes the node it opens a pointwise group.
//! 2. **Inlining.** After that, each other producer group of the node that is
//!    pointwise (no reduction, GEMM, attention or table), has at most
//!    [`MAX_INLINE_NODES`] nodes, has an iteration space no larger than the
//!    consumer group's, writes no graph output and is read only by pointwise
//!    members of the node's group is merged into it — recomputing it per
//!    element is cheaper than a kernel launch and a round trip through
//!    memory. This is how the `[B, 1, C]` `1 + scale` of a modulation ends
//!    up in the `[B, S, C]` LayerNorm kernel that broadcasts it.
//! 3. **Prologues.** A reduction takes the most recent producer group as a
//!    prologue when it is pointwise (so holds no reduction yet), computes the
//!    reduced operand (operand 0) and its iteration space is that operand's
//!    shape, possibly seen through a reshape (equal element counts: a
//!    fused-q/k/v slice reshaped to heads feeding RmsNorm). Residual add →
//!    LayerNorm thus becomes one kernel that writes both the residual sum and
//!    the normalized value (groups may have several outputs). The group
//!    becomes a reduction group anchored at the reduction. Otherwise the
//!    reduction opens its own group.
//! 4. **Never:**
//!    - a GEMM or attention consuming a fused prologue — their operands are
//!      read by the backend (cuBLASLt / CUTLASS / flash attention) from
//!      memory;
//!    - a table op (`RopeTable`, `TimestepEmbedding`) taking a prologue;
//!    - a reduction fused into a GEMM group (it needs whole rows, an
//!      epilogue sees tiles), into a table group, or after attention;
//!    - two reductions in one group (one reduction per kernel), except a
//!      per-row `DynamicScale` after another row reduction: it joins that
//!      reduction's group when it reduces the same rows (its operand is
//!      computed in the group over the group's iteration space) and the
//!      group has no scale yet. LayerNorm → modulation → fp8 scale →
//!      quantize is then one kernel that writes only the fp8 values and
//!      their scales;
//!    - a whole-tensor `DynamicScale` fused with anything: it needs every
//!      element before its value exists, so it reads its operand from
//!      memory in its own grid-wide kernel, and whatever reads it (the
//!      quantize) runs after, in another kernel;
//!    - any merge that would create a cycle between groups: a path that
//!      leaves one side, runs through a kernel outside both and re-enters
//!      the other. Checked by a bounded reachability search before merging.
//!
//! Every producer group a node reads but does not end up sharing a group with
//! is recorded as a [`Refusal`] (producer = the most recent node of that
//! group the consumer reads), with the reason of the rule that refused it;
//! when a legal merge was not taken only because the node had already joined
//! a more recent producer's group, the reason says so. If a refused pointwise
//! producer was also not inlined, the inlining reason is appended. Refusals
//! whose two nodes end up in one group anyway (via a later inlining) are
//! dropped.
//!
//! # Output
//!
//! Groups come in dependency order (every group after the groups it reads;
//! ties by first node), members in topological order. Anchors: the GEMM,
//! reduction, attention or table node; for a pointwise group the node that
//! opened it, i.e. the first node computing over the group's iteration
//! space (inlined small producers are never anchors). Everything is
//! deterministic: iteration follows the graph's topological order and node
//! indices, never hash order.

mod planner;
mod view;

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use fluxc_ir::{Graph, IrError, NodeId, OpClass};

use planner::Planner;
pub use planner::{
    ALREADY_JOINED, ATTENTION_EPILOGUE, CYCLE, EPILOGUE_OFF, MAX_INLINE_NODES, MOVEMENT_AFTER_GEMM,
    MOVEMENT_AFTER_REDUCTION, NOT_REDUCED_OPERAND, NO_PROLOGUE, REDUCTION_IN_GEMM,
    REDUCTION_IN_TABLE, TABLE_PROLOGUE, TWO_REDUCTIONS, TWO_SCALES, WHOLE_TENSOR_SCALE,
};
use view::View;

/// Plans the kernels of `graph` (see the module docs for the rules).
/// `epilogue_fusion` allows pointwise tails on GEMMs
/// ([`PassOptions::epilogue_fusion`](crate::PassOptions::epilogue_fusion)).
///
/// Fails only when the graph has a cycle.
pub fn plan_fusion(graph: &Graph, epilogue_fusion: bool) -> Result<FusionPlan, IrError> {
    let view = View::new(graph)?;
    Planner::new(&view, epilogue_fusion).run()
}

/// A partition of a graph's live compute nodes into kernels, and the fusions
/// that were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FusionPlan {
    /// The groups, in dependency order: a group comes after every group
    /// whose values it reads.
    pub groups: Vec<Group>,
    /// Every considered and refused merge, by consumer in topological order.
    pub refusals: Vec<Refusal>,
}

/// One kernel: a GEMM, attention, reduction, table or pointwise kernel with
/// the nodes fused into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// What kind of kernel codegen emits.
    pub kind: GroupKind,
    /// Member nodes in topological order.
    pub nodes: Vec<NodeId>,
    /// The GEMM / reduction / attention / table node; for a pointwise
    /// group the node that opened it, the first one computing over the
    /// group's iteration space (inlined small producers are never anchors).
    pub anchor: NodeId,
}

/// The kind of a group, from its anchor's [`OpClass`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKind {
    /// Elementwise and movement ops only: one pointwise kernel.
    Pointwise,
    /// One reduction (norm, softmax, dynamic scale) with its prologue and epilogue.
    Reduction,
    /// A GEMM call (linear, matmul, conv) with its epilogue.
    Gemm,
    /// An attention call (no epilogue).
    Attention,
    /// A computed table (rotary table, timestep embedding) with its tail.
    Table,
}

impl GroupKind {
    /// Lower-case name used in dumps.
    pub fn name(self) -> &'static str {
        match self {
            GroupKind::Pointwise => "pointwise",
            GroupKind::Reduction => "reduction",
            GroupKind::Gemm => "gemm",
            GroupKind::Attention => "attention",
            GroupKind::Table => "table",
        }
    }

    /// The op class a group of this kind is anchored on.
    pub fn anchor_class(self) -> OpClass {
        match self {
            GroupKind::Pointwise => OpClass::Elementwise,
            GroupKind::Reduction => OpClass::Reduction,
            GroupKind::Gemm => OpClass::Gemm,
            GroupKind::Attention => OpClass::Attention,
            GroupKind::Table => OpClass::Table,
        }
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fusion that was considered and refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The producer whose group the consumer did not join (or take in).
    pub producer: NodeId,
    /// The node that reads it.
    pub consumer: NodeId,
    /// Why, in words (one of the reason constants of this module, possibly
    /// with shapes or an inlining reason appended).
    pub why: String,
}

impl FusionPlan {
    /// The index of the group holding `node`, or `None` for inputs,
    /// reshapes and dead nodes.
    pub fn group_of(&self, node: NodeId) -> Option<usize> {
        self.groups.iter().position(|g| g.nodes.contains(&node))
    }

    /// Values produced inside group `g` and read outside it (or graph
    /// outputs): what the kernel must write. In topological order. Reads
    /// through reshapes count; dead readers do not.
    pub fn group_outputs(&self, graph: &Graph, g: usize) -> Vec<NodeId> {
        let live = graph.live_nodes();
        let members = &self.groups[g].nodes;
        let is_output = |id: NodeId| graph.outputs().iter().any(|&(_, o)| o == id);
        members
            .iter()
            .copied()
            .filter(|&x| escapes(graph, x, &|u| members.contains(&u), &live, &is_output))
            .collect()
    }

    /// The text form: every graph line (numbered `%0, %1, ...` in
    /// topological order as `print_graph` does) prefixed by its group (`g3`;
    /// `-` for inputs and reshapes, `dead` for nodes no output needs), the
    /// outputs, then one line per group (`g3 reduction anchor=%7 nodes=4
    /// outputs=[%6, %9]`), then one line per refusal (`refused %p -> %c:
    /// why`). Deterministic.
    pub fn dump(&self, graph: &Graph) -> Result<String, IrError> {
        let view = View::new(graph)?;
        let number: BTreeMap<NodeId, usize> = view
            .order
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i))
            .collect();
        let member: BTreeMap<NodeId, usize> = self
            .groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| group.nodes.iter().map(move |&n| (n, g)))
            .collect();
        let tag = |id: NodeId| match member.get(&id) {
            Some(g) => format!("g{g}"),
            None if view.is_live(id) => "-".to_string(),
            None => "dead".to_string(),
        };
        let width = view
            .order
            .iter()
            .map(|&id| tag(id).len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for &id in &view.order {
            let line = node_line(graph, id, &number);
            writeln!(out, "{:<width$}  {line}", tag(id)).unwrap();
        }
        for (name, id) in graph.outputs() {
            writeln!(out, "output \"{name}\" = %{}", number[id]).unwrap();
        }
        out.push('\n');
        for (g, group) in self.groups.iter().enumerate() {
            let outputs: Vec<String> = kernel_outputs(&view, &group.nodes)
                .iter()
                .map(|o| format!("%{}", number[o]))
                .collect();
            writeln!(
                out,
                "g{g} {} anchor=%{} nodes={} outputs=[{}]",
                group.kind,
                number[&group.anchor],
                group.nodes.len(),
                outputs.join(", ")
            )
            .unwrap();
        }
        if !self.refusals.is_empty() {
            out.push('\n');
        }
        for r in &self.refusals {
            writeln!(
                out,
                "refused %{} -> %{}: {}",
                number[&r.producer], number[&r.consumer], r.why
            )
            .unwrap();
        }
        Ok(out)
    }
}

/// [`FusionPlan::group_outputs`] from the view's precomputed users (the
/// dump asks for every group's outputs; this keeps it linear).
fn kernel_outputs(view: &View<'_>, members: &[NodeId]) -> Vec<NodeId> {
    let inside: std::collections::BTreeSet<NodeId> = members.iter().copied().collect();
    members
        .iter()
        .copied()
        .filter(|&x| view.is_output(x) || view.users(x).iter().any(|u| !inside.contains(u)))
        .collect()
}

/// Whether `x`'s value is read by a live node outside the group (through
/// reshapes) or is a graph output (directly or as a reshape).
fn escapes(
    graph: &Graph,
    x: NodeId,
    inside: &dyn Fn(NodeId) -> bool,
    live: &std::collections::HashSet<NodeId>,
    is_output: &dyn Fn(NodeId) -> bool,
) -> bool {
    if is_output(x) {
        return true;
    }
    graph.users(x).into_iter().any(|(u, _)| {
        if !live.contains(&u) {
            false
        } else if view::is_view(graph, u) {
            escapes(graph, u, inside, live, is_output)
        } else {
            !inside(u)
        }
    })
}

/// One node as `print_graph` renders it, with its renumbered operands.
fn node_line(graph: &Graph, id: NodeId, number: &BTreeMap<NodeId, usize>) -> String {
    let node = graph.node(id);
    let mut line = format!("%{}: {} = {}", number[&id], node.ty, node.op);
    let operands: Vec<String> = graph
        .operands(id)
        .iter()
        .map(|o| format!("%{}", number[o]))
        .collect();
    if !operands.is_empty() {
        write!(line, "({})", operands.join(", ")).unwrap();
    }
    if !node.scope.is_empty() {
        write!(line, "  @{}", node.scope).unwrap();
    }
    line
}
