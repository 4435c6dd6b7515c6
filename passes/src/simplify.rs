//! Simplification of views and data movement that change no values.
//!
//! Rules, applied to a fixpoint:
//! - `reshape` to the same shape, `permute` by the identity, `cast` to the
//!   same dtype, and a `slice` of a whole axis are their operand;
//! - `reshape(reshape(x))` is one reshape, `slice(slice(x))` along one axis is
//!   one slice;
//! - a `slice` of a `concat` along the same axis that falls inside one part
//!   reads that part;
//! - a `concat` of consecutive slices of one tensor along the sliced axis is
//!   that tensor (or one slice of it).
//!
//! The last rule is what removes the join-then-split of text and image tokens
//! that every FLUX single-stream block does: block i splits its output into
//! text and image, block i+1 concatenates them back.

use fluxc_ir::{Graph, IrError, NodeId, Op};

/// Simplifies `graph` to a fixpoint; returns how many nodes were replaced.
pub fn simplify(graph: &mut Graph) -> Result<usize, IrError> {
    let mut replaced = 0;
    loop {
        let mut changed = false;
        for id in graph.topo_order()? {
            if !graph.contains(id) {
                continue;
            }
            if let Some(new) = simplify_node(graph, id)? {
                graph.replace_all_uses(id, new)?;
                replaced += 1;
                changed = true;
            }
        }
        graph.remove_dead_nodes();
        if !changed {
            return Ok(replaced);
        }
    }
}

/// A value equal to node `id` but simpler, if a rule applies.
fn simplify_node(g: &mut Graph, id: NodeId) -> Result<Option<NodeId>, IrError> {
    let node = g.node(id).clone();
    let operands = g.operands(id);
    let Some(&x) = operands.first() else {
        return Ok(None);
    };
    let x_ty = g.ty(x).clone();
    let add = |g: &mut Graph, op: Op, operands: &[NodeId]| g.add_node(op, operands, &node.scope);
    match &node.op {
        Op::Reshape(shape) => {
            if &x_ty.shape == shape {
                return Ok(Some(x));
            }
            if let Op::Reshape(_) = g.node(x).op {
                let inner = g.operands(x)[0];
                if &g.ty(inner).shape == shape {
                    return Ok(Some(inner));
                }
                return add(g, Op::Reshape(shape.clone()), &[inner]).map(Some);
            }
        }
        Op::Permute(perm) if perm.iter().enumerate().all(|(i, &p)| i == p) => return Ok(Some(x)),
        Op::Cast(dtype) if x_ty.dtype == *dtype => return Ok(Some(x)),
        Op::Slice { axis, start, end } => {
            let (axis, start, end) = (*axis, *start, *end);
            if start == 0 && end == x_ty.shape.dims()[axis] {
                return Ok(Some(x));
            }
            match g.node(x).op.clone() {
                Op::Slice {
                    axis: inner_axis,
                    start: inner_start,
                    ..
                } if inner_axis == axis => {
                    let source = g.operands(x)[0];
                    let op = Op::Slice {
                        axis,
                        start: start + inner_start,
                        end: end + inner_start,
                    };
                    return add(g, op, &[source]).map(Some);
                }
                Op::Concat { axis: cat_axis } if cat_axis == axis => {
                    return slice_of_concat(g, x, axis, start, end, &node.scope);
                }
                _ => {}
            }
        }
        Op::Concat { axis } => return concat_of_slices(g, &operands, *axis, &node.scope),
        _ => {}
    }
    Ok(None)
}

/// `concat(parts)[start..end]` along the concat axis, when the range lies
/// inside one part.
fn slice_of_concat(
    g: &mut Graph,
    concat: NodeId,
    axis: usize,
    start: usize,
    end: usize,
    scope: &str,
) -> Result<Option<NodeId>, IrError> {
    let mut offset = 0;
    for part in g.operands(concat) {
        let len = g.ty(part).shape.dims()[axis];
        if start >= offset && end <= offset + len {
            if start == offset && end == offset + len {
                return Ok(Some(part));
            }
            let op = Op::Slice {
                axis,
                start: start - offset,
                end: end - offset,
            };
            return g.add_node(op, &[part], scope).map(Some);
        }
        offset += len;
    }
    Ok(None)
}

/// `concat(x[a..b], x[b..c], ...)` along the sliced axis is `x[a..z]`.
fn concat_of_slices(
    g: &mut Graph,
    parts: &[NodeId],
    axis: usize,
    scope: &str,
) -> Result<Option<NodeId>, IrError> {
    let mut source = None;
    let mut first = None;
    let mut next = 0;
    for &part in parts {
        let Op::Slice {
            axis: a,
            start,
            end,
        } = g.node(part).op
        else {
            return Ok(None);
        };
        let src = g.operands(part)[0];
        if a != axis || source.is_some_and(|s| s != src) || first.is_some() && start != next {
            return Ok(None);
        }
        source = Some(src);
        first.get_or_insert(start);
        next = end;
    }
    let (Some(src), Some(start)) = (source, first) else {
        return Ok(None);
    };
    if start == 0 && next == g.ty(src).shape.dims()[axis] {
        return Ok(Some(src));
    }
    let op = Op::Slice {
        axis,
        start,
        end: next,
    };
    g.add_node(op, &[src], scope).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxc_ir::{print_graph, DType, GraphBuilder};

    #[test]
    fn split_then_concat_is_the_original() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [1, 5, 2]).unwrap();
        let t = b.slice(x, 1, 0, 2).unwrap();
        let i = b.slice(x, 1, 2, 5).unwrap();
        let j = b.concat(&[t, i], 1).unwrap();
        let y = b.silu(j).unwrap();
        b.output("y", y).unwrap();
        let mut g = b.finish().unwrap();
        assert_eq!(simplify(&mut g).unwrap(), 1);
        assert_eq!(
            print_graph(&g).unwrap(),
            "%0: f32[1,5,2] = input[\"x\"]\n%1: f32[1,5,2] = silu(%0)\noutput \"y\" = %1\n"
        );
    }

    #[test]
    fn slice_of_concat_reads_the_part() {
        let mut b = GraphBuilder::new();
        let a = b.input("a", DType::F32, [3, 2]).unwrap();
        let c = b.input("c", DType::F32, [4, 2]).unwrap();
        let j = b.concat(&[a, c], 0).unwrap();
        let whole_c = b.slice(j, 0, 3, 7).unwrap();
        let part_c = b.slice(j, 0, 4, 6).unwrap();
        let across = b.slice(j, 0, 2, 5).unwrap();
        b.output("whole_c", whole_c).unwrap();
        b.output("part_c", part_c).unwrap();
        b.output("across", across).unwrap();
        let mut g = b.finish().unwrap();
        simplify(&mut g).unwrap();
        let text = print_graph(&g).unwrap();
        assert_eq!(
            text,
            "%0: f32[3,2] = input[\"a\"]\n\
             %1: f32[4,2] = input[\"c\"]\n\
             %2: f32[7,2] = concat[axis=0](%0, %1)\n\
             %3: f32[3,2] = slice[axis=0 2..5](%2)\n\
             %4: f32[2,2] = slice[axis=0 1..3](%1)\n\
             output \"whole_c\" = %1\n\
             output \"part_c\" = %4\n\
             output \"across\" = %3\n"
        );
    }

    #[test]
    fn chains_of_views_collapse() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [2, 6]).unwrap();
        let r1 = b.reshape(x, [3, 4]).unwrap();
        let r2 = b.reshape(r1, [12]).unwrap();
        let s1 = b.slice(r2, 0, 2, 10).unwrap();
        let s2 = b.slice(s1, 0, 1, 3).unwrap();
        let back = b.reshape(r2, [2, 6]).unwrap();
        b.output("s", s2).unwrap();
        b.output("back", back).unwrap();
        let mut g = b.finish().unwrap();
        simplify(&mut g).unwrap();
        assert_eq!(
            print_graph(&g).unwrap(),
            "%0: f32[2,6] = input[\"x\"]\n\
             %1: f32[12] = reshape[12](%0)\n\
             %2: f32[2] = slice[axis=0 3..5](%1)\n\
             output \"s\" = %2\n\
             output \"back\" = %0\n"
        );
    }
}
