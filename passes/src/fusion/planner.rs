//! The greedy planner behind [`plan_fusion`](super::plan_fusion).
//!
//! Nodes are visited once, in topological order; each compute node either
//! joins an existing group or opens a new one, and groups only ever grow or
//! merge (by inlining). Every decision is made from the groups built so far,
//! which is what makes the pass greedy and cheap: one pass over the graph,
//! plus a bounded reachability search per attempted merge. The rules and
//! their reasons are listed in the parent module's header; the reason
//! strings live here as constants so tests can match them.

use fluxc_ir::{Graph, IrError, NodeId, Op, OpClass, Shape};

use super::view::{is_input, is_view, NodeSet, View};
use super::{FusionPlan, Group, GroupKind, Refusal};

/// Refusal: a pointwise tail of a GEMM while epilogue fusion is disabled.
pub const EPILOGUE_OFF: &str = "epilogue_fusion is off";
/// Refusal: anything reading an attention output.
pub const ATTENTION_EPILOGUE: &str = "attention epilogues are not fused";
/// Refusal: a GEMM or attention reading a computed operand.
pub const NO_PROLOGUE: &str =
    "GEMM/attention operands are read by the backend; prologues are not fused";
/// Refusal: a reduction reading a GEMM group.
pub const REDUCTION_IN_GEMM: &str = "a reduction needs whole rows; not fused into a GEMM epilogue";
/// Refusal: a reduction reading a group that already has one.
pub const TWO_REDUCTIONS: &str = "one reduction per kernel";
/// Refusal: a whole-tensor quantization scale taking a prologue or a tail.
pub const WHOLE_TENSOR_SCALE: &str =
    "a whole-tensor scale is a grid-wide reduction: it runs as its own kernel, and its readers after it";
/// Refusal: a second quantization scale in a reduction group.
pub const TWO_SCALES: &str = "one quantization scale per kernel";
/// Refusal: the merge would make the group graph cyclic.
pub const CYCLE: &str = "would create a cycle between groups";
/// Refusal: a table op reading a computed value.
pub const TABLE_PROLOGUE: &str = "tables are computed by their own kernel; prologues are not fused";
/// Refusal: a reduction reading a table group.
pub const REDUCTION_IN_TABLE: &str = "a reduction is not fused into a table kernel";
/// Refusal: a data-movement op after a GEMM.
pub const MOVEMENT_AFTER_GEMM: &str = "data movement is not fused into a GEMM epilogue";
/// Refusal: a data-movement op after a reduction.
pub const MOVEMENT_AFTER_REDUCTION: &str = "data movement is not fused into a reduction epilogue";
/// Refusal: a reduction whose reduced operand does not come from the group.
pub const NOT_REDUCED_OPERAND: &str = "only the reduced operand takes a prologue";
/// Refusal: the merge was legal or moot, but the consumer had already joined
/// the group of a more recent producer.
pub const ALREADY_JOINED: &str = "the consumer already joined a more recent producer's group";

/// Largest pointwise group that is inlined (recomputed) into a consumer.
pub const MAX_INLINE_NODES: usize = 8;

/// The kind of group a node anchors, or `None` for inputs and reshapes,
/// which belong to no group.
pub(crate) fn role(graph: &Graph, id: NodeId) -> Option<GroupKind> {
    if is_input(graph, id) || is_view(graph, id) {
        return None;
    }
    Some(match graph.node(id).op.class() {
        OpClass::Input => return None,
        OpClass::Elementwise | OpClass::Movement => GroupKind::Pointwise,
        OpClass::Reduction => GroupKind::Reduction,
        OpClass::Gemm => GroupKind::Gemm,
        OpClass::Attention => GroupKind::Attention,
        OpClass::Table => GroupKind::Table,
    })
}

/// Whether `id` is a per-row `DynamicScale` (a row reduction that may
/// follow another row reduction in one kernel).
fn is_row_scale(graph: &Graph, id: NodeId) -> bool {
    matches!(graph.node(id).op, Op::DynamicScale { per_row: true, .. })
}

/// Whether `id` is a whole-tensor `DynamicScale`.
fn is_tensor_scale(graph: &Graph, id: NodeId) -> bool {
    matches!(graph.node(id).op, Op::DynamicScale { per_row: false, .. })
}

/// A group under construction.
struct Building {
    kind: GroupKind,
    anchor: NodeId,
    nodes: Vec<NodeId>,
    /// Iteration space: the shape every non-inlined member computes over (the
    /// anchor's output shape; the reduced operand's shape once a reduction
    /// joins, which is the reduction's output shape except for a
    /// `DynamicScale`, whose output has one value per row or tensor).
    space: Shape,
}

/// What became of an attempt to inline a producer group.
enum Inline {
    /// The producer is not a pointwise group: inlining does not apply.
    NotApplicable,
    /// Merged into the consumer's group.
    Done,
    /// Refused, with the reason.
    Refused(String),
}

/// Planner state: group membership by node index and the groups so far.
pub(crate) struct Planner<'v, 'g> {
    view: &'v View<'g>,
    epilogue_fusion: bool,
    group_of: Vec<Option<usize>>,
    groups: Vec<Option<Building>>,
    refusals: Vec<Refusal>,
}

impl<'v, 'g> Planner<'v, 'g> {
    /// A planner with no groups yet.
    pub fn new(view: &'v View<'g>, epilogue_fusion: bool) -> Self {
        let bound = view
            .order
            .iter()
            .map(|id| id.index() + 1)
            .max()
            .unwrap_or(0);
        Planner {
            view,
            epilogue_fusion,
            group_of: vec![None; bound],
            groups: Vec::new(),
            refusals: Vec::new(),
        }
    }

    /// Places every live compute node, then freezes the groups.
    pub fn run(mut self) -> Result<FusionPlan, IrError> {
        for i in 0..self.view.order.len() {
            let n = self.view.order[i];
            if !self.view.is_live(n) {
                continue;
            }
            match role(self.view.graph, n) {
                None => {}
                Some(GroupKind::Pointwise) => self.place_pointwise(n),
                Some(GroupKind::Reduction) => self.place_reduction(n),
                Some(kind) => self.place_alone(n, kind),
            }
        }
        self.finish()
    }

    fn graph(&self) -> &'g Graph {
        self.view.graph
    }

    fn shape(&self, id: NodeId) -> &'g Shape {
        &self.view.graph.ty(id).shape
    }

    fn group(&self, g: usize) -> &Building {
        self.groups[g].as_ref().expect("live group")
    }

    fn group_of(&self, id: NodeId) -> Option<usize> {
        self.group_of[id.index()]
    }

    /// The distinct groups `n` reads, each with its most recent producer,
    /// most recent first.
    fn producer_groups(&self, n: NodeId) -> Vec<(usize, NodeId)> {
        let mut out: Vec<(usize, NodeId)> = Vec::new();
        for &p in self.view.producers(n) {
            let g = self.group_of(p).expect("producers are placed before users");
            if !out.iter().any(|&(h, _)| h == g) {
                out.push((g, p));
            }
        }
        out
    }

    fn refuse(&mut self, producer: NodeId, consumer: NodeId, why: impl Into<String>) {
        self.refusals.push(Refusal {
            producer,
            consumer,
            why: why.into(),
        });
    }

    fn new_group(&mut self, n: NodeId, kind: GroupKind) -> usize {
        let g = self.groups.len();
        self.groups.push(Some(Building {
            kind,
            anchor: n,
            nodes: vec![n],
            space: self.shape(n).clone(),
        }));
        self.group_of[n.index()] = Some(g);
        g
    }

    fn add_to(&mut self, g: usize, n: NodeId) {
        self.groups[g].as_mut().expect("live group").nodes.push(n);
        self.group_of[n.index()] = Some(g);
    }

    /// Moves every node of group `from` into group `into`.
    fn merge(&mut self, from: usize, into: usize) {
        let moved = self.groups[from].take().expect("live group").nodes;
        for &id in &moved {
            self.group_of[id.index()] = Some(into);
        }
        self.groups[into]
            .as_mut()
            .expect("live group")
            .nodes
            .extend(moved);
    }

    /// The members of group `g` as a [`NodeSet`].
    fn group_set(&self, g: usize) -> NodeSet<'_> {
        NodeSet {
            nodes: self.group(g).nodes.clone(),
            contains: Box::new(move |id| self.group_of(id) == Some(g)),
        }
    }

    /// Whether adding the unplaced node `n` to group `g` would make a cycle.
    fn join_cycles(&self, n: NodeId, g: usize) -> bool {
        let lone = NodeSet {
            nodes: vec![n],
            contains: Box::new(move |id| id == n),
        };
        self.view.would_cycle(&lone, &self.group_set(g))
    }

    // ----- pointwise -------------------------------------------------------

    /// A pointwise node joins the most recent producer group that takes it as
    /// a tail, or opens a group; then small pointwise producer groups are
    /// inlined into its group, and every other producer group is refused.
    fn place_pointwise(&mut self, n: NodeId) {
        let candidates = self.producer_groups(n);
        let mut reasons: Vec<Option<String>> = vec![None; candidates.len()];
        let mut joined = None;
        for (i, &(g, _)) in candidates.iter().enumerate() {
            match self.tail_rule(n, g) {
                Ok(()) if self.join_cycles(n, g) => reasons[i] = Some(CYCLE.into()),
                Ok(()) => {
                    self.add_to(g, n);
                    joined = Some(g);
                    break;
                }
                Err(why) => reasons[i] = Some(why),
            }
        }
        let c = match joined {
            Some(g) => g,
            None => self.new_group(n, GroupKind::Pointwise),
        };
        for (i, &(g, p)) in candidates.iter().enumerate() {
            if g == c {
                continue;
            }
            let base = reasons[i]
                .take()
                .unwrap_or_else(|| self.tail_rule(n, g).err().unwrap_or(ALREADY_JOINED.into()));
            match self.try_inline(g, c) {
                Inline::Done => {}
                Inline::NotApplicable => self.refuse(p, n, base),
                Inline::Refused(why) => self.refuse(p, n, format!("{base}; not inlined: {why}")),
            }
        }
    }

    /// Whether pointwise `n` may join group `g` as a tail (cycles aside).
    fn tail_rule(&self, n: NodeId, g: usize) -> Result<(), String> {
        let group = self.group(g);
        let shape = self.shape(n);
        let movement = self.graph().node(n).op.class() == OpClass::Movement;
        let same = |what: &str| {
            if *shape == group.space {
                Ok(())
            } else {
                Err(format!(
                    "output shape {shape} differs from {what} {}",
                    group.space
                ))
            }
        };
        match group.kind {
            GroupKind::Pointwise if self.same_flat_space(n, g) => Ok(()),
            GroupKind::Pointwise => same("the group's iteration space"),
            GroupKind::Table => same("the table's output"),
            GroupKind::Attention => Err(ATTENTION_EPILOGUE.into()),
            GroupKind::Reduction if is_tensor_scale(self.graph(), group.anchor) => {
                Err(WHOLE_TENSOR_SCALE.into())
            }
            GroupKind::Reduction if movement => Err(MOVEMENT_AFTER_REDUCTION.into()),
            GroupKind::Reduction => same("the reduction's output"),
            GroupKind::Gemm if !self.epilogue_fusion => Err(EPILOGUE_OFF.into()),
            GroupKind::Gemm if movement => Err(MOVEMENT_AFTER_GEMM.into()),
            GroupKind::Gemm => same("the GEMM output"),
        }
    }

    /// Whether pointwise `n` iterates over the same elements in the same
    /// order as pointwise group `g` although the shapes differ: equal element
    /// counts, and every value of `g` that `n` reads (through reshapes, which
    /// keep row-major order) has that count too, so none is broadcast.
    fn same_flat_space(&self, n: NodeId, g: usize) -> bool {
        let numel = self.shape(n).numel();
        numel == self.group(g).space.numel()
            && self.graph().operands(n).into_iter().all(|o| {
                self.group_of(self.view.source(o)) != Some(g) || self.shape(o).numel() == numel
            })
    }

    /// Inlines pointwise producer group `g` into consumer group `c` when it
    /// is small, no larger than `c`'s iteration space, writes no graph
    /// output, is read only by pointwise members of `c`, and no cycle results.
    fn try_inline(&mut self, g: usize, c: usize) -> Inline {
        if self.group(g).kind != GroupKind::Pointwise {
            return Inline::NotApplicable;
        }
        match self.inline_rule(g, c) {
            Ok(()) => {
                self.merge(g, c);
                Inline::Done
            }
            Err(why) => Inline::Refused(why),
        }
    }

    fn inline_rule(&self, g: usize, c: usize) -> Result<(), String> {
        let (producer, consumer) = (self.group(g), self.group(c));
        if producer.nodes.len() > MAX_INLINE_NODES {
            return Err(format!(
                "the producer group has {} nodes (more than {MAX_INLINE_NODES})",
                producer.nodes.len()
            ));
        }
        if producer.space.numel() > consumer.space.numel() {
            return Err(format!(
                "its iteration space {} is larger than the consumer's {}",
                producer.space, consumer.space
            ));
        }
        for &x in &producer.nodes {
            if self.view.is_output(x) {
                return Err("it writes a graph output".into());
            }
            for &u in self.view.users(x) {
                if self.group_of(u) == Some(g) {
                    continue;
                }
                if self.group_of(u) != Some(c) {
                    return Err("its values are also read outside the consumer's group".into());
                }
                if role(self.graph(), u) != Some(GroupKind::Pointwise) {
                    return Err(format!(
                        "it is read by {}, which takes no prologue",
                        self.graph().node(u).op.kind_name()
                    ));
                }
            }
        }
        if self
            .view
            .would_cycle(&self.group_set(g), &self.group_set(c))
        {
            return Err(CYCLE.into());
        }
        Ok(())
    }

    // ----- reductions ------------------------------------------------------

    /// A reduction takes the most recent pointwise producer group that
    /// computes its reduced operand as a prologue, or opens a group.
    fn place_reduction(&mut self, n: NodeId) {
        if is_tensor_scale(self.graph(), n) {
            for (_, p) in self.producer_groups(n) {
                self.refuse(p, n, WHOLE_TENSOR_SCALE);
            }
            self.open_reduction(n);
            return;
        }
        let mut joined = false;
        for (g, p) in self.producer_groups(n) {
            let verdict = self.prologue_rule(n, g);
            if joined {
                let why = verdict.err().unwrap_or(ALREADY_JOINED.into());
                self.refuse(p, n, why);
                continue;
            }
            match verdict {
                Ok(()) if self.join_cycles(n, g) => self.refuse(p, n, CYCLE),
                Ok(()) if self.group(g).kind == GroupKind::Reduction => {
                    self.add_to(g, n);
                    joined = true;
                }
                Ok(()) => {
                    self.take_as_prologue(g, n);
                    joined = true;
                }
                Err(why) => self.refuse(p, n, why),
            }
        }
        if !joined {
            self.open_reduction(n);
        }
    }

    /// A new reduction group for `n`, iterating over its reduced operand.
    fn open_reduction(&mut self, n: NodeId) {
        let g = self.new_group(n, GroupKind::Reduction);
        let space = self.shape(self.graph().operands(n)[0]).clone();
        self.groups[g].as_mut().expect("live group").space = space;
    }

    /// Whether reduction `n` may take group `g` as its prologue (cycles aside).
    fn prologue_rule(&self, n: NodeId, g: usize) -> Result<(), String> {
        let group = self.group(g);
        match group.kind {
            GroupKind::Gemm => return Err(REDUCTION_IN_GEMM.into()),
            GroupKind::Reduction if is_row_scale(self.graph(), n) => {
                return self.row_scale_rule(n, g)
            }
            GroupKind::Reduction => return Err(TWO_REDUCTIONS.into()),
            GroupKind::Attention => return Err(ATTENTION_EPILOGUE.into()),
            GroupKind::Table => return Err(REDUCTION_IN_TABLE.into()),
            GroupKind::Pointwise => {}
        }
        let reduced = self.graph().operands(n)[0];
        if self.group_of(self.view.source(reduced)) != Some(g) {
            return Err(NOT_REDUCED_OPERAND.into());
        }
        // A reshape between the group and the reduction keeps row-major
        // order, so equal element counts are the same iteration space.
        let input = self.shape(reduced);
        if input.numel() != group.space.numel() {
            return Err(format!(
                "the group's iteration space {} differs from the reduction's input {input}",
                group.space
            ));
        }
        Ok(())
    }

    /// Whether the per-row scale `n` may join reduction group `g` as its
    /// second reduction: the rows it reduces are the group's rows (its
    /// operand is computed in `g` over `g`'s iteration space), and `g` has
    /// no quantization scale yet. The kernel then reduces twice: the
    /// group's statistics, then the absmax of a value computed from them.
    fn row_scale_rule(&self, n: NodeId, g: usize) -> Result<(), String> {
        let group = self.group(g);
        if is_tensor_scale(self.graph(), group.anchor) {
            return Err(WHOLE_TENSOR_SCALE.into());
        }
        if group
            .nodes
            .iter()
            .any(|&m| matches!(self.graph().node(m).op, Op::DynamicScale { .. }))
        {
            return Err(TWO_SCALES.into());
        }
        let reduced = self.graph().operands(n)[0];
        if self.group_of(self.view.source(reduced)) != Some(g) {
            return Err(NOT_REDUCED_OPERAND.into());
        }
        let input = self.shape(reduced);
        if *input != group.space {
            return Err(format!(
                "the group's rows {} differ from the scale's input {input}",
                group.space
            ));
        }
        Ok(())
    }

    /// Turns pointwise group `g` into a reduction group anchored at `n`.
    fn take_as_prologue(&mut self, g: usize, n: NodeId) {
        let space = self.shape(self.graph().operands(n)[0]).clone();
        self.add_to(g, n);
        let group = self.groups[g].as_mut().expect("live group");
        group.kind = GroupKind::Reduction;
        group.anchor = n;
        group.space = space;
    }

    // ----- GEMM, attention, tables ----------------------------------------

    /// GEMMs, attention and tables always open their own group; every
    /// producer group they read is refused as a prologue.
    fn place_alone(&mut self, n: NodeId, kind: GroupKind) {
        let why = match kind {
            GroupKind::Table => TABLE_PROLOGUE,
            _ => NO_PROLOGUE,
        };
        for (_, p) in self.producer_groups(n) {
            self.refuse(p, n, why);
        }
        self.new_group(n, kind);
    }

    // ----- result ----------------------------------------------------------

    /// Sorts members topologically, orders the
    /// groups by dependency and drops refusals that later merges made moot.
    fn finish(self) -> Result<FusionPlan, IrError> {
        let view = self.view;
        let mut building: Vec<(usize, Building)> = self
            .groups
            .into_iter()
            .enumerate()
            .filter_map(|(g, b)| b.map(|b| (g, b)))
            .collect();
        for (_, b) in &mut building {
            b.nodes.sort_by_key(|&id| view.pos(id));
        }
        let order = dependency_order(view, &building, &self.group_of)?;
        let mut slots: Vec<Option<Building>> = building.into_iter().map(|(_, b)| Some(b)).collect();
        let mut groups = Vec::with_capacity(order.len());
        for &slot in &order {
            let b = slots[slot].take().expect("each group once");
            groups.push(Group {
                kind: b.kind,
                nodes: b.nodes,
                anchor: b.anchor,
            });
        }
        let group_of = &self.group_of;
        let refusals = self
            .refusals
            .into_iter()
            .filter(|r| group_of[r.producer.index()] != group_of[r.consumer.index()])
            .collect();
        Ok(FusionPlan { groups, refusals })
    }
}

/// The groups in an order where every group comes after the groups it reads
/// (Kahn's algorithm; among ready groups the one whose first node comes
/// first). Returns indices into `building`.
fn dependency_order(
    view: &View<'_>,
    building: &[(usize, Building)],
    group_of: &[Option<usize>],
) -> Result<Vec<usize>, IrError> {
    use std::cmp::Reverse;
    use std::collections::{BTreeSet, BinaryHeap};

    let mut preds: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); building.len()];
    let mut succs: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); building.len()];
    let mut slot_by_group = vec![usize::MAX; group_of.len()];
    for (slot, (g, _)) in building.iter().enumerate() {
        slot_by_group[*g] = slot;
    }
    for (slot, (_, b)) in building.iter().enumerate() {
        for &n in &b.nodes {
            for &p in view.producers(n) {
                let ps = slot_by_group[group_of[p.index()].expect("placed")];
                if ps != slot {
                    preds[slot].insert(ps);
                    succs[ps].insert(slot);
                }
            }
        }
    }
    let first = |slot: usize| view.pos(building[slot].1.nodes[0]);
    let mut pending: Vec<usize> = preds.iter().map(BTreeSet::len).collect();
    let mut ready: BinaryHeap<Reverse<(usize, usize)>> = (0..building.len())
        .filter(|&s| pending[s] == 0)
        .map(|s| Reverse((first(s), s)))
        .collect();
    let mut order = Vec::with_capacity(building.len());
    while let Some(Reverse((_, s))) = ready.pop() {
        order.push(s);
        for &t in &succs[s] {
            pending[t] -= 1;
            if pending[t] == 0 {
                ready.push(Reverse((first(t), t)));
            }
        }
    }
    if order.len() != building.len() {
        return Err(IrError::Invalid(
            "fusion planned a cycle between groups (a bug in the planner)".into(),
        ));
    }
    Ok(order)
}
