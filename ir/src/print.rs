//! Deterministic text form of a graph, for `--dump-after`, `graph.txt` in the
//! artifact, and insta snapshots.
//!
//! Values are renumbered `%0, %1, ...` in topological order, so the text does
//! not depend on node indices left behind by rewrites: two graphs that compute
//! the same thing in the same order print the same. One line per node:
//!
//! ```text
//! %3: f32[1,16,32] = linear(%0, %1, %2)  @x_embedder
//! output "sample" = %120
//! ```

use std::collections::HashMap;
use std::fmt::Write;

use crate::{Graph, IrError, NodeId};

/// Renders `graph` as text, one node per line, then the outputs.
pub fn print_graph(graph: &Graph) -> Result<String, IrError> {
    let order = graph.topo_order()?;
    let number: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut out = String::new();
    for &id in &order {
        let node = graph.node(id);
        let operands: Vec<String> = graph
            .operands(id)
            .iter()
            .map(|o| format!("%{}", number[o]))
            .collect();
        write!(out, "%{}: {} = {}", number[&id], node.ty, node.op).unwrap();
        if !operands.is_empty() {
            write!(out, "({})", operands.join(", ")).unwrap();
        }
        if !node.scope.is_empty() {
            write!(out, "  @{}", node.scope).unwrap();
        }
        out.push('\n');
    }
    for (name, id) in graph.outputs() {
        writeln!(out, "output \"{name}\" = %{}", number[id]).unwrap();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::{DType, GraphBuilder};

    #[test]
    fn prints_in_topological_order_with_scopes() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [2, 4]).unwrap();
        b.push_scope("proj");
        let w = b.weight("proj.weight", DType::F32, [3, 4]).unwrap();
        let y = b.linear(x, w, None).unwrap();
        b.pop_scope();
        let z = b.gelu_tanh(y).unwrap();
        b.output("z", z).unwrap();
        let text = super::print_graph(&b.finish().unwrap()).unwrap();
        assert_eq!(
            text,
            "%0: f32[2,4] = input[\"x\"]\n\
             %1: f32[3,4] = weight[\"proj.weight\"]  @proj\n\
             %2: f32[2,3] = linear(%0, %1)  @proj\n\
             %3: f32[2,3] = gelu_tanh(%2)\n\
             output \"z\" = %3\n"
        );
    }
}
