//! The graph as fusion sees it: live nodes in topological order, with
//! `Reshape` looked through.
//!
//! A reshape is a free view (same elements, same row-major order), so it is
//! no kernel and no edge of its own: a node reading `reshape(p)` reads `p`.
//! [`View`] precomputes, for every live node, its *producers* (the non-reshape
//! sources of its operands, inputs excluded) and its *users* (the live
//! non-reshape nodes that read it, directly or through reshapes). Everything
//! is indexed by node index in plain vectors, so no hash order can leak into
//! the plan or its dump.

use std::collections::HashSet;

use fluxc_ir::{Graph, IrError, NodeId, Op};

/// Read-only, precomputed facts about a graph that the planner and the dump
/// need (see the module docs).
pub(crate) struct View<'g> {
    /// The graph.
    pub graph: &'g Graph,
    /// Every node (dead ones too) in the graph's deterministic topological order.
    pub order: Vec<NodeId>,
    /// Position of each node in `order`, by node index.
    pos: Vec<usize>,
    /// Whether each node is live (some output depends on it), by node index.
    live: Vec<bool>,
    /// Whether each node's value is a graph output (directly or through reshapes).
    output: Vec<bool>,
    /// Producers of each live node, most recent (highest position) first.
    producers: Vec<Vec<NodeId>>,
    /// Users of each live node, through reshapes, live only, by node index.
    users: Vec<Vec<NodeId>>,
}

impl<'g> View<'g> {
    /// Builds the view; fails when the graph has a cycle.
    pub fn new(graph: &'g Graph) -> Result<Self, IrError> {
        let order = graph.topo_order()?;
        let bound = order.iter().map(|id| id.index() + 1).max().unwrap_or(0);
        let mut pos = vec![usize::MAX; bound];
        for (i, id) in order.iter().enumerate() {
            pos[id.index()] = i;
        }
        let live_set = graph.live_nodes();
        let mut live = vec![false; bound];
        for id in &live_set {
            live[id.index()] = true;
        }
        let mut view = View {
            graph,
            order,
            pos,
            live,
            output: vec![false; bound],
            producers: vec![Vec::new(); bound],
            users: vec![Vec::new(); bound],
        };
        view.mark_outputs();
        view.link();
        Ok(view)
    }

    /// Marks every output and the reshape chain below it.
    fn mark_outputs(&mut self) {
        for &(_, out) in self.graph.outputs() {
            let mut id = out;
            self.output[id.index()] = true;
            while is_view(self.graph, id) {
                id = self.graph.operands(id)[0];
                self.output[id.index()] = true;
            }
        }
    }

    /// Fills `producers` and `users` for the live non-view nodes.
    fn link(&mut self) {
        for i in 0..self.order.len() {
            let id = self.order[i];
            if !self.is_live(id) || is_view(self.graph, id) {
                continue;
            }
            let mut producers: Vec<NodeId> = self
                .graph
                .operands(id)
                .into_iter()
                .map(|o| self.source(o))
                .filter(|&p| !is_input(self.graph, p))
                .collect();
            producers.sort_by_key(|&p| std::cmp::Reverse(self.pos(p)));
            producers.dedup();
            for &p in &producers {
                self.users[p.index()].push(id);
            }
            self.producers[id.index()] = producers;
        }
    }

    /// Topological position of `id` (in the whole graph).
    pub fn pos(&self, id: NodeId) -> usize {
        self.pos[id.index()]
    }

    /// Whether some graph output depends on `id`.
    pub fn is_live(&self, id: NodeId) -> bool {
        self.live.get(id.index()).copied().unwrap_or(false)
    }

    /// Whether `id`'s value must be written because it is a graph output.
    pub fn is_output(&self, id: NodeId) -> bool {
        self.output[id.index()]
    }

    /// `id` with any chain of reshapes above it peeled off.
    pub fn source(&self, mut id: NodeId) -> NodeId {
        while is_view(self.graph, id) {
            id = self.graph.operands(id)[0];
        }
        id
    }

    /// The compute nodes `id` reads (through reshapes), most recent first.
    pub fn producers(&self, id: NodeId) -> &[NodeId] {
        &self.producers[id.index()]
    }

    /// The live compute nodes that read `id` (through reshapes), in topological order.
    pub fn users(&self, id: NodeId) -> &[NodeId] {
        &self.users[id.index()]
    }

    /// Whether merging the node sets `a` and `b` (given as membership tests
    /// plus their nodes) would put a cycle between groups: some path leaves
    /// one set, passes through a kernel outside both, and enters the other.
    pub fn would_cycle(&self, a: &NodeSet<'_>, b: &NodeSet<'_>) -> bool {
        self.path_through_outside(a, b) || self.path_through_outside(b, a)
    }

    /// Depth-first search from the users of `from` that lie outside both
    /// sets; true when it reaches `to`. Nodes after the last node of `to`
    /// cannot lead back to it and are not explored.
    fn path_through_outside(&self, from: &NodeSet<'_>, to: &NodeSet<'_>) -> bool {
        let Some(limit) = to.nodes.iter().map(|&n| self.pos(n)).max() else {
            return false;
        };
        let outside = |u: NodeId| !from.contains(u) && !to.contains(u) && self.pos(u) < limit;
        let mut stack: Vec<NodeId> = from
            .nodes
            .iter()
            .flat_map(|&n| self.users(n).iter().copied())
            .filter(|&u| outside(u))
            .collect();
        let mut seen: HashSet<NodeId> = HashSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            for &u in self.users(x) {
                if to.contains(u) {
                    return true;
                }
                if outside(u) {
                    stack.push(u);
                }
            }
        }
        false
    }
}

/// A set of nodes for [`View::would_cycle`]: its members and a membership test.
pub(crate) struct NodeSet<'a> {
    /// The members.
    pub nodes: Vec<NodeId>,
    /// Membership test (cheaper than searching `nodes`).
    pub contains: Box<dyn Fn(NodeId) -> bool + 'a>,
}

impl NodeSet<'_> {
    fn contains(&self, id: NodeId) -> bool {
        (self.contains)(id)
    }
}

/// A reshape: a free view, never a kernel.
pub(crate) fn is_view(graph: &Graph, id: NodeId) -> bool {
    matches!(graph.node(id).op, Op::Reshape(_))
}

/// A graph input (activation or weight).
pub(crate) fn is_input(graph: &Graph, id: NodeId) -> bool {
    matches!(graph.node(id).op, Op::Input { .. })
}
