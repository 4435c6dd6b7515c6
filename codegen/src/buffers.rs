//! What a step's operands live in: the buffer of a graph value, or a
//! codegen-private temporary.
//!
//! Most steps read and write materialized graph values. A few lowerings
//! need memory the graph has no node for: GroupNorm's per-chunk partial
//! sums and per-group statistics (written by one kernel, read by the next),
//! the score matrix of decomposed attention, and fp8 attention's
//! key-innermost copy of v. Such a [`Temp`] is named
//! by the node it serves and its role, so it is unique without a counter,
//! and the memory plan places it in the arena by liveness like any value.

use fluxc_ir::{DType, Graph, NodeId};

/// The role of a temporary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TempKind {
    /// GroupNorm: shifted sums per (batch, chunk of pixels, group).
    GroupPartials,
    /// GroupNorm: `(mean, rstd)` per (batch, group).
    GroupStats,
    /// Decomposed attention: scores, then probabilities (in place).
    Scores,
    /// fp8 attention: v laid out `[batch, heads, head_dim, padded keys]`
    /// (the V layout kernel writes it, the attention kernel reads it).
    VTransposed,
    /// A gated residual's per-channel scale (`gated.rs`).
    GatedScale,
    /// A gated residual's bias (`gated.rs`).
    GatedBias,
}

impl TempKind {
    /// How buffer names call it.
    pub fn name(self) -> &'static str {
        match self {
            TempKind::GroupPartials => "partial sums",
            TempKind::GroupStats => "statistics",
            TempKind::Scores => "scores",
            TempKind::VTransposed => "key-innermost v",
            TempKind::GatedScale => "gated scales",
            TempKind::GatedBias => "gated bias",
        }
    }
}

/// A codegen-private buffer of `elements` values of `dtype`, serving node
/// `of`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Temp {
    /// The node it serves.
    pub of: NodeId,
    /// Its role.
    pub what: TempKind,
    /// Element type.
    pub dtype: DType,
    /// Elements.
    pub elements: u64,
}

/// A buffer a step reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Buf {
    /// A materialized graph value.
    Node(NodeId),
    /// A temporary.
    Temp(Temp),
}

impl Buf {
    /// The element type.
    pub fn dtype(self, graph: &Graph) -> DType {
        match self {
            Buf::Node(id) => graph.ty(id).dtype,
            Buf::Temp(t) => t.dtype,
        }
    }

    /// The shape (a temporary is one-dimensional).
    pub fn dims(self, graph: &Graph) -> Vec<usize> {
        match self {
            Buf::Node(id) => graph.ty(id).shape.dims().to_vec(),
            Buf::Temp(t) => vec![t.elements as usize],
        }
    }

    /// The number of elements.
    pub fn elements(self, graph: &Graph) -> u64 {
        match self {
            Buf::Node(id) => graph.ty(id).shape.numel() as u64,
            Buf::Temp(t) => t.elements,
        }
    }

    /// The graph value, if it is one.
    pub fn node(self) -> Option<NodeId> {
        match self {
            Buf::Node(id) => Some(id),
            Buf::Temp(_) => None,
        }
    }
}
