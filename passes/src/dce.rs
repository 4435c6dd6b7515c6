//! Dead code elimination: drops every node no graph output depends on.
//!
//! The FLUX builder leaves some by construction (the text stream sliced off
//! after the last single block), and every rewriting pass leaves the nodes it
//! replaced; running this between passes keeps dumps and counts honest.

use fluxc_ir::Graph;

/// Removes dead nodes; returns how many.
pub fn eliminate_dead_code(graph: &mut Graph) -> usize {
    graph.remove_dead_nodes()
}
