//! The verifier: checks a whole graph is well formed and well typed.
//!
//! Run after building and after every pass. It re-infers every node's type
//! from its operands and compares it with the stored one, so a pass that
//! rewires or edits nodes without keeping types consistent is caught here.

use std::collections::HashSet;

use crate::{infer, Graph, IrError, Op, TensorType};

/// Checks that `graph` has outputs, no cycles, unique input names, operand
/// slots numbered `0..n` on every node, and stored types equal to inferred ones.
pub fn verify(graph: &Graph) -> Result<(), IrError> {
    if graph.outputs().is_empty() {
        return Err(IrError::NoOutputs);
    }
    let order = graph.topo_order()?;
    let mut names = HashSet::new();
    for id in order {
        let node = graph.node(id);
        let incoming = graph.operand_slots(id);
        let slots: Vec<usize> = incoming.iter().map(|(slot, _)| *slot).collect();
        let operands: Vec<_> = incoming.iter().map(|(_, o)| *o).collect();
        if slots != (0..operands.len()).collect::<Vec<_>>() {
            return Err(IrError::Invalid(format!(
                "{id} ({}) has operand slots {slots:?}",
                node.op
            )));
        }
        if let Op::Input { name, .. } = &node.op {
            if !operands.is_empty() {
                return Err(IrError::Invalid(format!("input `{name}` has operands")));
            }
            if !names.insert(name.clone()) {
                return Err(IrError::DuplicateInput(name.clone()));
            }
            continue;
        }
        let types: Vec<&TensorType> = operands.iter().map(|&o| graph.ty(o)).collect();
        let inferred = infer(&node.op, &types).map_err(|msg| IrError::Type {
            op: node.op.to_string(),
            scope: node.scope.clone(),
            msg,
        })?;
        if inferred != node.ty {
            return Err(IrError::Type {
                op: node.op.to_string(),
                scope: node.scope.clone(),
                msg: format!(
                    "{id} is stored as {} but its operands give {inferred}",
                    node.ty
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{DType, GraphBuilder, Op, TensorType};

    #[test]
    fn catches_a_stale_type_after_an_edit() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [4]).unwrap();
        let y = b.silu(x).unwrap();
        b.output("y", y).unwrap();
        let mut g = b.finish().unwrap();
        g.node_mut(y).ty = TensorType::new(DType::BF16, [4]);
        let err = super::verify(&g).unwrap_err().to_string();
        assert!(err.contains("stored as bf16[4]"), "{err}");
        g.node_mut(y).ty = TensorType::new(DType::F32, [4]);
        g.node_mut(y).op = Op::Softmax;
        assert!(super::verify(&g).is_ok());
    }
}
