//! The dataflow graph: nodes are ops with their inferred type, edges carry
//! values from a producer to an operand slot of a consumer.
//!
//! Built on petgraph's `StableDiGraph` so node ids survive removals while
//! passes rewrite the graph. The operand order of a node is the edge weight
//! (slot index); a node may use the same value in several slots. Everything
//! that walks the graph (topological order, users) is deterministic: ties are
//! broken by node index, never by hash order, so dumps and generated code are
//! stable.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fmt;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;

use crate::{infer, DType, InputKind, IrError, Op, Shape, TensorType};

/// A handle to a node (and to the one value it produces).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex);

impl NodeId {
    /// The underlying index (stable across removals of other nodes).
    pub fn index(self) -> usize {
        self.0.index()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0.index())
    }
}

/// A node: an op, the type of the value it produces, and the builder scope it
/// was created in (e.g. `transformer_blocks.3.attn`), kept for dumps and for
/// passes that recognise model structure.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Type of the produced value.
    pub ty: TensorType,
    /// Dotted module path the node came from (may be empty).
    pub scope: String,
}

/// A tensor program with named inputs (activations and weights) and named outputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableDiGraph<Node, usize>,
    outputs: Vec<(String, NodeId)>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a graph input with a declared type. Input names must be unique.
    pub fn add_input(
        &mut self,
        name: &str,
        kind: InputKind,
        dtype: DType,
        shape: impl Into<Shape>,
        scope: &str,
    ) -> Result<NodeId, IrError> {
        if self.find_input(name).is_some() {
            return Err(IrError::DuplicateInput(name.to_string()));
        }
        let ty = TensorType::new(dtype, shape);
        crate::infer::check_not_empty(&ty).map_err(|msg| IrError::Type {
            op: format!("input[\"{name}\"]"),
            scope: scope.to_string(),
            msg,
        })?;
        let node = Node {
            op: Op::Input {
                name: name.to_string(),
                kind,
            },
            ty,
            scope: scope.to_string(),
        };
        Ok(NodeId(self.g.add_node(node)))
    }

    /// Adds a node computing `op` over `operands`, inferring its type.
    pub fn add_node(
        &mut self,
        op: Op,
        operands: &[NodeId],
        scope: &str,
    ) -> Result<NodeId, IrError> {
        if matches!(op, Op::Input { .. }) {
            return Err(IrError::Invalid(
                "inputs are added with add_input, which declares their type".into(),
            ));
        }
        for &o in operands {
            if !self.contains(o) {
                return Err(IrError::Invalid(format!("operand {o} is not in the graph")));
            }
        }
        let types: Vec<&TensorType> = operands.iter().map(|&o| &self.g[o.0].ty).collect();
        let ty = infer(&op, &types).map_err(|msg| IrError::Type {
            op: op.to_string(),
            scope: scope.to_string(),
            msg,
        })?;
        let id = NodeId(self.g.add_node(Node {
            op,
            ty,
            scope: scope.to_string(),
        }));
        for (slot, &o) in operands.iter().enumerate() {
            self.g.add_edge(o.0, id.0, slot);
        }
        Ok(id)
    }

    /// Names `value` as a graph output. Output names must be unique.
    pub fn set_output(&mut self, name: &str, value: NodeId) -> Result<(), IrError> {
        if self.outputs.iter().any(|(n, _)| n == name) {
            return Err(IrError::DuplicateOutput(name.to_string()));
        }
        if !self.contains(value) {
            return Err(IrError::Invalid(format!(
                "output {value} is not in the graph"
            )));
        }
        self.outputs.push((name.to_string(), value));
        Ok(())
    }

    /// The named outputs, in the order they were declared.
    pub fn outputs(&self) -> &[(String, NodeId)] {
        &self.outputs
    }

    /// Whether `id` names a live node.
    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id.0)
    }

    /// The node behind `id`. Panics if the node was removed: ids come from
    /// this graph, so a dangling one is a bug in the caller, not bad input.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.0]
    }

    /// Mutable access to a node. Changing `op` or `ty` must keep the graph
    /// well-typed; run the verifier after such rewrites.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id.0]
    }

    /// The type of the value `id` produces.
    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.g[id.0].ty
    }

    /// Operands of `id`, in slot order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        self.operand_slots(id).into_iter().map(|(_, n)| n).collect()
    }

    /// `(slot, operand)` pairs of `id` sorted by slot; the verifier checks the
    /// slots are exactly `0..n`.
    pub(crate) fn operand_slots(&self, id: NodeId) -> Vec<(usize, NodeId)> {
        let mut edges: Vec<(usize, NodeId)> = self
            .g
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source())))
            .collect();
        edges.sort();
        edges
    }

    /// Users of `id` with the slot they read it in, ordered by (user, slot).
    pub fn users(&self, id: NodeId) -> Vec<(NodeId, usize)> {
        let mut users: Vec<(NodeId, usize)> = self
            .g
            .edges_directed(id.0, Direction::Outgoing)
            .map(|e| (NodeId(e.target()), *e.weight()))
            .collect();
        users.sort();
        users
    }

    /// Number of live nodes.
    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    /// True when the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// All live node ids in index order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.g.node_indices().map(NodeId).collect();
        ids.sort();
        ids
    }

    /// Graph inputs (activations and weights) in index order.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.node_ids()
            .into_iter()
            .filter(|&id| matches!(self.node(id).op, Op::Input { .. }))
            .collect()
    }

    /// The input called `name`, if any.
    pub fn find_input(&self, name: &str) -> Option<NodeId> {
        self.g
            .node_indices()
            .find(|&i| matches!(&self.g[i].op, Op::Input { name: n, .. } if n == name))
            .map(NodeId)
    }

    /// Nodes in a topological order, operands before users, chosen so dumps
    /// read like the code that built the graph: among ready nodes the one
    /// with the smallest *priority* goes first, where a node's priority is
    /// the smallest index of itself and everything downstream of it (ties
    /// by index). A freshly built graph comes out in build order; a node a
    /// pass added later (with a large index) comes out where it is first
    /// needed, not at the end. Fails with `IrError::Cycle` if the graph has one.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, IrError> {
        let post_order = self.post_order()?;
        let mut priority = vec![usize::MAX; self.g.node_bound()];
        for &id in post_order.iter().rev() {
            let downstream = self
                .g
                .neighbors_directed(id.0, Direction::Outgoing)
                .map(|u| priority[u.index()])
                .min()
                .unwrap_or(usize::MAX);
            priority[id.index()] = downstream.min(id.index());
        }
        let mut pending: Vec<usize> = vec![0; self.g.node_bound()];
        let mut ready = BinaryHeap::new();
        for i in self.g.node_indices() {
            let n = self.g.edges_directed(i, Direction::Incoming).count();
            pending[i.index()] = n;
            if n == 0 {
                ready.push(Reverse((priority[i.index()], i.index())));
            }
        }
        let mut order = Vec::with_capacity(self.g.node_count());
        while let Some(Reverse((_, i))) = ready.pop() {
            let idx = NodeIndex::new(i);
            order.push(NodeId(idx));
            for e in self.g.edges_directed(idx, Direction::Outgoing) {
                let t = e.target().index();
                pending[t] -= 1;
                if pending[t] == 0 {
                    ready.push(Reverse((priority[t], t)));
                }
            }
        }
        Ok(order)
    }

    /// A depth-first post-order of every node (operands before users), or
    /// `IrError::Cycle`.
    fn post_order(&self) -> Result<Vec<NodeId>, IrError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Unseen,
            Open,
            Done,
        }
        let mut mark = vec![Mark::Unseen; self.g.node_bound()];
        let mut order = Vec::with_capacity(self.g.node_count());
        for root in self.node_ids() {
            if mark[root.index()] != Mark::Unseen {
                continue;
            }
            mark[root.index()] = Mark::Open;
            // (node, its operands, how many of them were visited)
            let mut stack = vec![(root, self.operands(root), 0usize)];
            while let Some(top) = stack.len().checked_sub(1) {
                let (node, next) = (stack[top].0, stack[top].2);
                if let Some(&operand) = stack[top].1.get(next) {
                    stack[top].2 += 1;
                    match mark[operand.index()] {
                        Mark::Unseen => {
                            mark[operand.index()] = Mark::Open;
                            stack.push((operand, self.operands(operand), 0));
                        }
                        Mark::Open => return Err(IrError::Cycle),
                        Mark::Done => {}
                    }
                } else {
                    mark[node.index()] = Mark::Done;
                    order.push(node);
                    stack.pop();
                }
            }
        }
        Ok(order)
    }

    /// Makes every user of `old` (and every output naming it) use `new` instead.
    /// The types must match; `old` itself stays (dead code elimination removes it).
    ///
    /// Users that `new` is computed from keep reading `old`: rewiring them
    /// would make a cycle. So `replace_all_uses(y, f(y))` inserts `f` after `y`
    /// for everyone else, the usual way a pass appends an op to a value.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) -> Result<(), IrError> {
        if old == new {
            return Ok(());
        }
        if self.ty(old) != self.ty(new) {
            return Err(IrError::Invalid(format!(
                "cannot replace {old}: {} with {new}: {}",
                self.ty(old),
                self.ty(new)
            )));
        }
        let upstream_of_new = self.ancestors(new);
        for (user, slot) in self.users(old) {
            if upstream_of_new.contains(&user.0) {
                continue;
            }
            let edge = self
                .g
                .edges_connecting(old.0, user.0)
                .find(|e| *e.weight() == slot)
                .map(|e| e.id())
                .expect("user edge listed by users()");
            self.g.remove_edge(edge);
            self.g.add_edge(new.0, user.0, slot);
        }
        for (_, out) in &mut self.outputs {
            if *out == old {
                *out = new;
            }
        }
        Ok(())
    }

    /// `node` and every node it reads, directly or indirectly.
    fn ancestors(&self, node: NodeId) -> HashSet<NodeIndex> {
        let mut seen: HashSet<NodeIndex> = HashSet::new();
        let mut stack = vec![node.0];
        while let Some(i) = stack.pop() {
            if seen.insert(i) {
                stack.extend(self.g.neighbors_directed(i, Direction::Incoming));
            }
        }
        seen
    }

    /// The nodes some output depends on (outputs included).
    pub fn live_nodes(&self) -> HashSet<NodeId> {
        let mut live = HashSet::new();
        for (_, out) in &self.outputs {
            if !live.contains(&out.0) {
                live.extend(self.ancestors(*out));
            }
        }
        live.into_iter().map(NodeId).collect()
    }

    /// Removes every node that no output depends on. Weights and activation
    /// inputs go too when unused. Returns how many nodes were removed.
    pub fn remove_dead_nodes(&mut self) -> usize {
        let live = self.live_nodes();
        let dead: Vec<NodeIndex> = self
            .g
            .node_indices()
            .filter(|&i| !live.contains(&NodeId(i)))
            .collect();
        for &i in &dead {
            self.g.remove_node(i);
        }
        dead.len()
    }
}
