//! Common subexpression elimination: nodes computing the same op over the
//! same operands are merged into the first of them.
//!
//! In FLUX, every AdaLayerNorm applies its own SiLU to the one conditioning
//! vector (80 identical `silu(temb)` nodes in FLUX.1-dev), and per-token
//! reshapes repeat; after CSE each is computed once. Inputs are never merged
//! (their names are unique). Walking in topological order means operands are
//! already canonical when a node is looked up, so one pass reaches the
//! fixpoint.

use std::collections::HashMap;

use fluxc_ir::{Graph, IrError, NodeId, Op};

/// Merges duplicate nodes; returns how many were replaced.
pub fn eliminate_common_subexpressions(graph: &mut Graph) -> Result<usize, IrError> {
    let mut seen: HashMap<(Op, Vec<NodeId>), NodeId> = HashMap::new();
    let mut replaced = 0;
    for id in graph.topo_order()? {
        let op = graph.node(id).op.clone();
        if matches!(op, Op::Input { .. }) {
            continue;
        }
        let key = (op, graph.operands(id));
        match seen.get(&key) {
            Some(&first) => {
                graph.replace_all_uses(id, first)?;
                replaced += 1;
            }
            None => {
                seen.insert(key, id);
            }
        }
    }
    graph.remove_dead_nodes();
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxc_ir::{print_graph, DType, GraphBuilder};

    #[test]
    fn merges_repeated_silu_and_what_depends_on_it() {
        let mut b = GraphBuilder::new();
        let t = b.input("temb", DType::F32, [1, 4]).unwrap();
        let a = b.silu(t).unwrap();
        let c = b.silu(t).unwrap();
        let ra = b.reshape(a, [1, 1, 4]).unwrap();
        let rc = b.reshape(c, [1, 1, 4]).unwrap();
        let s = b.add(ra, rc).unwrap();
        b.output("s", s).unwrap();
        let mut g = b.finish().unwrap();
        assert_eq!(eliminate_common_subexpressions(&mut g).unwrap(), 2);
        assert_eq!(
            print_graph(&g).unwrap(),
            "%0: f32[1,4] = input[\"temb\"]\n\
             %1: f32[1,4] = silu(%0)\n\
             %2: f32[1,1,4] = reshape[1,1,4](%1)\n\
             %3: f32[1,1,4] = add(%2, %2)\n\
             output \"s\" = %3\n"
        );
    }
}
