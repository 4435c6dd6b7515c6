//! Integration tests of the graph API (`fluxc_ir::Graph` and friends).
//!
//! Covers: `topo_order` (operands before users, deterministic, ties broken by
//! lowest index even after rewiring), `operands()`/`users()` ordering
//! (including a node that reads the same value twice), `replace_all_uses`
//! (rewires users and outputs, rejects type mismatches), `remove_dead_nodes`
//! (unused branches and weights go, outputs stay), input/output name
//! uniqueness, `verify`, and `print_graph`'s contiguous `%N` renumbering after
//! nodes are removed.

use std::collections::{HashMap, HashSet};

use fluxc_ir::interp::{self, InterpError, Tensor};
use fluxc_ir::{
    print_graph, verify, DType, Graph, GraphBuilder, InputKind, IrError, NodeId, Op, UnaryOp,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Asserts `order` holds every live node once and lists operands before users.
fn assert_topological(g: &Graph, order: &[NodeId]) {
    assert_eq!(order.len(), g.len(), "every live node exactly once");
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    assert_eq!(pos.len(), order.len(), "no node twice");
    for &id in order {
        for o in g.operands(id) {
            assert!(pos[&o] < pos[&id], "{o} must come before its user {id}");
        }
    }
}

/// A diamond with a shared input and a weight:
/// `x -> a = silu(x), b = linear(x, w) -> c = a + b -> output "c"`.
fn diamond() -> (Graph, [NodeId; 5]) {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 4]).unwrap();
    let w = b.weight("w", DType::F32, [4, 4]).unwrap();
    let a = b.silu(x).unwrap();
    let l = b.linear(x, w, None).unwrap();
    let c = b.add(a, l).unwrap();
    b.output("c", c).unwrap();
    (b.finish().unwrap(), [x, w, a, l, c])
}

fn feeds(pairs: &[(&str, Tensor)]) -> HashMap<String, Tensor> {
    pairs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

// ---------------------------------------------------------------------------
// topo_order
// ---------------------------------------------------------------------------

#[test]
fn topo_order_lists_operands_before_users() {
    let (g, [x, w, a, l, c]) = diamond();
    let order = g.topo_order().unwrap();
    assert_topological(&g, &order);
    // A freshly built graph comes out in build order.
    assert_eq!(order, vec![x, w, a, l, c]);
}

#[test]
fn topo_order_is_deterministic_across_calls_clones_and_rebuilds() {
    let (g, _) = diamond();
    let first = g.topo_order().unwrap();
    for _ in 0..5 {
        assert_eq!(g.topo_order().unwrap(), first);
    }
    assert_eq!(g.clone().topo_order().unwrap(), first);
    let (rebuilt, _) = diamond();
    assert_eq!(rebuilt.topo_order().unwrap(), first);
}

#[test]
fn topo_order_breaks_ties_by_lowest_index() {
    // Inputs p (0) and q (1); r = neg(q) (2); s = neg(p) (3); t = r - s (4).
    // Ready set starts {p, q}: p, then q; then r (2) before s (3).
    let mut b = GraphBuilder::new();
    let p = b.input("p", DType::F32, [3]).unwrap();
    let q = b.input("q", DType::F32, [3]).unwrap();
    let r = b.unary(UnaryOp::Neg, q).unwrap();
    let s = b.unary(UnaryOp::Neg, p).unwrap();
    let t = b.sub(r, s).unwrap();
    b.output("t", t).unwrap();
    let g = b.finish().unwrap();
    assert_eq!(g.topo_order().unwrap(), vec![p, q, r, s, t]);
}

#[test]
fn topo_order_follows_edges_when_index_order_is_not_topological() {
    // u = silu(a) is built before input `c`; after rewiring u to read c,
    // c (index 2) must precede u (index 1).
    let mut g = Graph::new();
    let a = g
        .add_input("a", InputKind::Activation, DType::F32, [4], "")
        .unwrap();
    let u = g.add_node(Op::Unary(UnaryOp::Silu), &[a], "").unwrap();
    let c = g
        .add_input("c", InputKind::Activation, DType::F32, [4], "")
        .unwrap();
    g.set_output("u", u).unwrap();
    g.replace_all_uses(a, c).unwrap();
    assert!(c.index() > u.index());
    let order = g.topo_order().unwrap();
    assert_topological(&g, &order);
    // c was added last but u (index 1) needs it, so it comes out first.
    assert_eq!(order, vec![a, c, u]);
    verify(&g).unwrap();
}

#[test]
fn topo_order_of_empty_graph_is_empty() {
    let g = Graph::new();
    assert!(g.is_empty());
    assert_eq!(g.topo_order().unwrap(), vec![]);
}

// ---------------------------------------------------------------------------
// operands / users
// ---------------------------------------------------------------------------

#[test]
fn operands_are_in_slot_order() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3]).unwrap();
    let w = b.weight("w", DType::F32, [5, 3]).unwrap();
    let bias = b.weight("bias", DType::F32, [5]).unwrap();
    let y = b.linear(x, w, Some(bias)).unwrap();
    let g = b.graph();
    assert_eq!(g.operands(y), vec![x, w, bias]);
    assert_eq!(g.operands(x), vec![]);

    let mut b = GraphBuilder::new();
    let p = b.input("p", DType::F32, [2]).unwrap();
    let q = b.input("q", DType::F32, [2]).unwrap();
    let d = b.sub(q, p).unwrap();
    assert_eq!(b.graph().operands(d), vec![q, p]);
}

#[test]
fn a_node_using_the_same_value_twice_lists_it_in_both_slots() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [3]).unwrap();
    let sq = b.mul(x, x).unwrap();
    let g = b.graph();
    assert_eq!(g.operands(sq), vec![x, x]);
    assert_eq!(g.users(x), vec![(sq, 0), (sq, 1)]);
}

#[test]
fn users_are_ordered_by_user_then_slot() {
    // x is read by: m = x*x (slots 0, 1), n = y - x (slot 1), k = cat(x, y, x) (slots 0, 2).
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    let y = b.input("y", DType::F32, [2]).unwrap();
    let m = b.mul(x, x).unwrap();
    let n = b.sub(y, x).unwrap();
    let k = b.concat(&[x, y, x], 0).unwrap();
    let g = b.graph();
    assert_eq!(g.users(x), vec![(m, 0), (m, 1), (n, 1), (k, 0), (k, 2)]);
    assert_eq!(g.users(y), vec![(n, 0), (k, 1)]);
    assert_eq!(g.users(k), vec![]);
    assert_eq!(g.operands(k), vec![x, y, x]);
}

#[test]
fn node_ids_inputs_and_find_input() {
    let (g, [x, w, a, l, c]) = diamond();
    assert_eq!(g.len(), 5);
    assert_eq!(g.node_ids(), vec![x, w, a, l, c]);
    assert_eq!(g.inputs(), vec![x, w]);
    assert_eq!(g.find_input("w"), Some(w));
    assert_eq!(g.find_input("nope"), None);
    assert!(g.node(w).op.is_weight());
    assert!(!g.node(x).op.is_weight());
    assert_eq!(format!("{c}"), format!("%{}", c.index()));
}

#[test]
fn builder_scopes_are_recorded_on_nodes() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    b.push_scope("blocks.0");
    b.push_scope("ff");
    let y = b.silu(x).unwrap();
    b.pop_scope();
    let z = b.unary(UnaryOp::Neg, y).unwrap();
    b.pop_scope();
    let out = b.unary(UnaryOp::Abs, z).unwrap();
    let g = b.graph();
    assert_eq!(g.node(x).scope, "");
    assert_eq!(g.node(y).scope, "blocks.0.ff");
    assert_eq!(g.node(z).scope, "blocks.0");
    assert_eq!(g.node(out).scope, "");
}

// ---------------------------------------------------------------------------
// replace_all_uses
// ---------------------------------------------------------------------------

#[test]
fn replace_all_uses_rewires_every_user_keeping_slots() {
    let (mut g, [x, _w, a, l, c]) = diamond();
    let t = g.add_node(Op::Unary(UnaryOp::Tanh), &[x], "").unwrap();
    g.replace_all_uses(a, t).unwrap();
    assert_eq!(g.operands(c), vec![t, l], "slot 0 now reads t");
    assert_eq!(g.users(a), vec![]);
    assert_eq!(g.users(t), vec![(c, 0)]);
    assert!(g.contains(a), "old stays until dead code elimination");
    verify(&g).unwrap();
    assert_topological(&g, &g.topo_order().unwrap());
}

#[test]
fn replace_all_uses_rewires_both_slots_of_x_times_x() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    let y = b.input("y", DType::F32, [2]).unwrap();
    let sq = b.mul(x, x).unwrap();
    b.output("sq", sq).unwrap();
    let mut g = b.finish().unwrap();
    g.replace_all_uses(x, y).unwrap();
    assert_eq!(g.operands(sq), vec![y, y]);
    assert_eq!(g.users(y), vec![(sq, 0), (sq, 1)]);
    assert_eq!(g.users(x), vec![]);
    verify(&g).unwrap();
    let out = interp::run(
        &g,
        &feeds(&[
            ("x", Tensor::full([2], 100.0)),
            ("y", Tensor::new([2], vec![3.0, -4.0]).unwrap()),
        ]),
    )
    .unwrap();
    assert_eq!(out["sq"].data, vec![9.0, 16.0]);
}

#[test]
fn replace_all_uses_rewires_outputs() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    let y = b.silu(x).unwrap();
    let z = b.unary(UnaryOp::Neg, x).unwrap();
    b.output("first", y).unwrap();
    b.output("other", z).unwrap();
    b.output("again", y).unwrap();
    let mut g = b.finish().unwrap();
    let t = g.add_node(Op::Unary(UnaryOp::Tanh), &[x], "").unwrap();
    g.replace_all_uses(y, t).unwrap();
    let outputs: Vec<(&str, NodeId)> = g
        .outputs()
        .iter()
        .map(|(n, id)| (n.as_str(), *id))
        .collect();
    // Every output naming y now names t; order and names are unchanged.
    assert_eq!(outputs, vec![("first", t), ("other", z), ("again", t)]);
    assert_eq!(g.remove_dead_nodes(), 1, "y is now dead");
    assert!(!g.contains(y));
    verify(&g).unwrap();
}

#[test]
fn replace_all_uses_with_itself_is_a_no_op() {
    let (mut g, [_, _, a, l, c]) = diamond();
    g.replace_all_uses(a, a).unwrap();
    assert_eq!(g.operands(c), vec![a, l]);
    verify(&g).unwrap();
}

#[test]
fn replace_all_uses_rejects_dtype_mismatch_and_leaves_graph_unchanged() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3]).unwrap();
    let y = b.silu(x).unwrap();
    let z = b.unary(UnaryOp::Neg, y).unwrap();
    let cast = b.cast(y, DType::BF16).unwrap();
    b.output("z", z).unwrap();
    b.output("cast", cast).unwrap();
    let mut g = b.finish().unwrap();
    let before = print_graph(&g).unwrap();
    let err = g.replace_all_uses(y, cast).unwrap_err();
    assert_eq!(
        err,
        IrError::Invalid(format!(
            "cannot replace {y}: f32[2,3] with {cast}: bf16[2,3]"
        ))
    );
    assert_eq!(g.users(y), vec![(z, 0), (cast, 0)]);
    assert_eq!(print_graph(&g).unwrap(), before);
}

#[test]
fn replace_all_uses_inserts_after_when_the_replacement_reads_the_old_value() {
    // "Insert t = f(y) after y, then point y's users at t": t keeps reading
    // y (rewiring it would make t = tanh(t), a cycle); everyone else reads t.
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [3]).unwrap();
    let y = b.silu(x).unwrap();
    let z = b.unary(UnaryOp::Neg, y).unwrap();
    b.output("z", z).unwrap();
    b.output("y", y).unwrap();
    let mut g = b.finish().unwrap();
    let t = g.add_node(Op::Unary(UnaryOp::Tanh), &[y], "").unwrap();
    // Also through an intermediate node: u = exp(t) depends on y via t.
    let u = g.add_node(Op::Unary(UnaryOp::Exp), &[t], "").unwrap();
    g.replace_all_uses(y, u).unwrap();
    assert_eq!(g.operands(t), vec![y]);
    assert_eq!(g.operands(u), vec![t]);
    assert_eq!(g.operands(z), vec![u]);
    assert_eq!(g.outputs()[1], ("y".to_string(), u));
    verify(&g).unwrap();
    assert_eq!(
        print_graph(&g).unwrap(),
        "%0: f32[3] = input[\"x\"]\n\
         %1: f32[3] = silu(%0)\n\
         %2: f32[3] = tanh(%1)\n\
         %3: f32[3] = exp(%2)\n\
         %4: f32[3] = neg(%3)\n\
         output \"z\" = %4\n\
         output \"y\" = %3\n"
    );
}

#[test]
fn replace_all_uses_rejects_shape_mismatch() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3]).unwrap();
    let t = b.input("t", DType::F32, [3, 2]).unwrap();
    let y = b.silu(x).unwrap();
    b.output("y", y).unwrap();
    let mut g = b.finish().unwrap();
    let err = g.replace_all_uses(x, t).unwrap_err();
    assert!(matches!(err, IrError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("f32[2,3]"), "{err}");
    assert!(err.to_string().contains("f32[3,2]"), "{err}");
    assert_eq!(g.operands(y), vec![x]);
}

// ---------------------------------------------------------------------------
// remove_dead_nodes
// ---------------------------------------------------------------------------

#[test]
fn remove_dead_nodes_removes_unused_branches_and_weights() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3]).unwrap();
    let w_used = b.weight("used.weight", DType::F32, [4, 3]).unwrap();
    let w_unused = b.weight("unused.weight", DType::F32, [4, 3]).unwrap();
    let spare = b.input("spare", DType::F32, [1]).unwrap();
    let y = b.linear(x, w_used, None).unwrap();
    // A dead branch: two nodes deep, hanging off a live value.
    let d1 = b.unary(UnaryOp::Exp, y).unwrap();
    let d2 = b.add(d1, y).unwrap();
    let z = b.gelu_tanh(y).unwrap();
    b.output("z", z).unwrap();
    let mut g = b.finish().unwrap();
    assert_eq!(g.len(), 8);

    assert_eq!(g.remove_dead_nodes(), 4);
    for dead in [w_unused, spare, d1, d2] {
        assert!(!g.contains(dead), "{dead} should be gone");
    }
    assert_eq!(g.node_ids(), vec![x, w_used, y, z]);
    assert_eq!(g.inputs(), vec![x, w_used]);
    assert_eq!(g.find_input("unused.weight"), None);
    assert_eq!(g.users(y), vec![(z, 0)]);
    assert_eq!(g.outputs(), &[("z".to_string(), z)]);
    verify(&g).unwrap();
    // A second pass finds nothing more.
    assert_eq!(g.remove_dead_nodes(), 0);
}

#[test]
fn interpreter_skips_dead_nodes_so_unused_inputs_need_not_be_fed() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    let w = b.weight("w", DType::F32, [2]).unwrap();
    let _unused = b.mul(x, w).unwrap();
    let y = b.unary(UnaryOp::Neg, x).unwrap();
    b.output("y", y).unwrap();
    let mut g = b.finish().unwrap();
    let inputs = feeds(&[("x", Tensor::new([2], vec![1.0, -2.0]).unwrap())]);
    // Only what the outputs need is evaluated, so the dead weight is not needed.
    assert_eq!(interp::run(&g, &inputs).unwrap()["y"].data, vec![-1.0, 2.0]);
    assert_eq!(g.remove_dead_nodes(), 2);
    assert_eq!(interp::run(&g, &inputs).unwrap()["y"].data, vec![-1.0, 2.0]);
    // A live input that is missing is still an error.
    assert_eq!(
        interp::run(&g, &feeds(&[])).unwrap_err(),
        InterpError::MissingInput("x".into())
    );
}

#[test]
fn remove_dead_nodes_keeps_every_output_and_its_cone() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    let y = b.input("y", DType::F32, [2]).unwrap();
    let s = b.add(x, y).unwrap();
    let n = b.unary(UnaryOp::Neg, s).unwrap();
    b.output("x_again", x).unwrap(); // an input as an output
    b.output("n", n).unwrap();
    let mut g = b.finish().unwrap();
    assert_eq!(g.remove_dead_nodes(), 0);
    assert_eq!(g.node_ids(), vec![x, y, s, n]);
}

#[test]
fn remove_dead_nodes_on_a_graph_without_outputs_removes_everything() {
    let mut g = Graph::new();
    let x = g
        .add_input("x", InputKind::Activation, DType::F32, [2], "")
        .unwrap();
    g.add_node(Op::Unary(UnaryOp::Neg), &[x], "").unwrap();
    assert_eq!(g.remove_dead_nodes(), 2);
    assert!(g.is_empty());
    assert_eq!(verify(&g).unwrap_err(), IrError::NoOutputs);
}

// ---------------------------------------------------------------------------
// Construction errors and verify
// ---------------------------------------------------------------------------

#[test]
fn duplicate_output_names_are_rejected() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    let y = b.silu(x).unwrap();
    b.output("y", y).unwrap();
    assert_eq!(
        b.output("y", x).unwrap_err(),
        IrError::DuplicateOutput("y".into())
    );
    // The same value under a second name is fine.
    b.output("y2", y).unwrap();
    let g = b.finish().unwrap();
    verify(&g).unwrap();
    let names: Vec<&str> = g.outputs().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["y", "y2"]);
    assert_eq!(
        IrError::DuplicateOutput("y".into()).to_string(),
        "duplicate graph output `y`"
    );
}

#[test]
fn duplicate_input_names_are_rejected_across_kinds() {
    let mut b = GraphBuilder::new();
    b.input("x", DType::F32, [2]).unwrap();
    assert_eq!(
        b.input("x", DType::F32, [2]).unwrap_err(),
        IrError::DuplicateInput("x".into())
    );
    assert_eq!(
        b.weight("x", DType::BF16, [3]).unwrap_err(),
        IrError::DuplicateInput("x".into())
    );
    assert_eq!(b.graph().len(), 1);
}

#[test]
fn outputs_and_operands_must_be_live_nodes() {
    let mut g = Graph::new();
    let x = g
        .add_input("x", InputKind::Activation, DType::F32, [2], "")
        .unwrap();
    let y = g.add_node(Op::Unary(UnaryOp::Neg), &[x], "").unwrap();
    g.set_output("x", x).unwrap();
    assert_eq!(g.remove_dead_nodes(), 1);
    assert!(!g.contains(y));
    assert!(matches!(g.set_output("y", y), Err(IrError::Invalid(_))));
    let err = g.add_node(Op::Unary(UnaryOp::Abs), &[y], "").unwrap_err();
    assert_eq!(
        err,
        IrError::Invalid(format!("operand {y} is not in the graph"))
    );
}

#[test]
fn inputs_cannot_be_added_as_ordinary_nodes() {
    let mut g = Graph::new();
    let op = Op::Input {
        name: "x".into(),
        kind: InputKind::Activation,
    };
    assert!(matches!(g.add_node(op, &[], ""), Err(IrError::Invalid(_))));
    assert!(g.is_empty());
}

#[test]
fn ill_typed_nodes_are_rejected_with_op_and_scope() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3]).unwrap();
    let y = b.input("y", DType::BF16, [2, 3]).unwrap();
    b.push_scope("mlp");
    let err = b.add(x, y).unwrap_err();
    match &err {
        IrError::Type { op, scope, msg } => {
            assert_eq!(op, "add");
            assert_eq!(scope, "mlp");
            assert!(msg.contains("dtype"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(b.graph().len(), 2, "nothing was added");
}

#[test]
fn verify_requires_outputs_and_catches_stale_types() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2]).unwrap();
    let y = b.silu(x).unwrap();
    assert_eq!(verify(b.graph()).unwrap_err(), IrError::NoOutputs);
    b.output("y", y).unwrap();
    let mut g = b.finish().unwrap();
    verify(&g).unwrap();
    g.node_mut(y).op = Op::Reshape([1, 2].into());
    assert!(matches!(verify(&g), Err(IrError::Type { .. })));
}

// ---------------------------------------------------------------------------
// print_graph
// ---------------------------------------------------------------------------

#[test]
fn print_graph_renumbers_contiguously_after_removals() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 3]).unwrap(); // 0
    b.weight("unused.weight", DType::BF16, [4, 3]).unwrap(); // 1, dead
    let dead = b.unary(UnaryOp::Neg, x).unwrap(); // 2, dead
    b.push_scope("blk");
    let y = b.silu(x).unwrap(); // 3
    b.pop_scope();
    b.mul(dead, y).unwrap(); // 4, dead
    let z = b.add_scalar(y, 1.5).unwrap(); // 5
    let s = b.slice(z, 1, 1, 3).unwrap(); // 6
    b.output("z", z).unwrap();
    b.output("s", s).unwrap();
    let mut g = b.finish().unwrap();
    assert_eq!(g.remove_dead_nodes(), 3);
    assert_eq!(
        print_graph(&g).unwrap(),
        "%0: f32[2,3] = input[\"x\"]\n\
         %1: f32[2,3] = silu(%0)  @blk\n\
         %2: f32[2,3] = add_scalar[1.5](%1)\n\
         %3: f32[2,2] = slice[axis=1 1..3](%2)\n\
         output \"z\" = %2\n\
         output \"s\" = %3\n"
    );
}

#[test]
fn print_graph_does_not_depend_on_indices_left_by_removals() {
    // Same computation, once built directly and once with dead nodes
    // interleaved and then removed: the dumps are identical.
    let clean = {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [4]).unwrap();
        let w = b.weight("w", DType::F32, [4]).unwrap();
        let m = b.mul(x, w).unwrap();
        let r = b.rms_norm(m, Some(w), 1e-6).unwrap();
        b.output("r", r).unwrap();
        b.finish().unwrap()
    };
    let mut messy = {
        let mut b = GraphBuilder::new();
        let junk = b.input("junk", DType::F32, [7]).unwrap();
        let x = b.input("x", DType::F32, [4]).unwrap();
        b.unary(UnaryOp::Exp, junk).unwrap();
        let w = b.weight("w", DType::F32, [4]).unwrap();
        b.unary(UnaryOp::Cos, x).unwrap();
        let m = b.mul(x, w).unwrap();
        b.softmax(m).unwrap();
        let r = b.rms_norm(m, Some(w), 1e-6).unwrap();
        b.output("r", r).unwrap();
        b.finish().unwrap()
    };
    assert_ne!(print_graph(&messy).unwrap(), print_graph(&clean).unwrap());
    assert_eq!(messy.remove_dead_nodes(), 4);
    assert_eq!(print_graph(&messy).unwrap(), print_graph(&clean).unwrap());
    assert_eq!(
        print_graph(&clean).unwrap(),
        "%0: f32[4] = input[\"x\"]\n\
         %1: f32[4] = weight[\"w\"]\n\
         %2: f32[4] = mul(%0, %1)\n\
         %3: f32[4] = rms_norm[eps=1e-6](%2, %1)\n\
         output \"r\" = %3\n"
    );
}

#[test]
fn nodes_added_after_removals_print_in_topological_order() {
    // After a removal, petgraph may hand the freed (lower) index to a new
    // node whose operand has a higher index; numbering must follow the
    // topological order, not the indices.
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [3]).unwrap();
    b.unary(UnaryOp::Exp, x).unwrap(); // dead
    let y = b.silu(x).unwrap();
    b.output("y", y).unwrap();
    let mut g = b.finish().unwrap();
    assert_eq!(g.remove_dead_nodes(), 1);
    let t = g.add_node(Op::Unary(UnaryOp::Tanh), &[y], "late").unwrap();
    g.set_output("t", t).unwrap();
    assert_eq!(g.operands(t), vec![y]);
    let order = g.topo_order().unwrap();
    assert_topological(&g, &order);
    assert_eq!(order, vec![x, y, t]);
    verify(&g).unwrap();
    assert_eq!(
        print_graph(&g).unwrap(),
        "%0: f32[3] = input[\"x\"]\n\
         %1: f32[3] = silu(%0)\n\
         %2: f32[3] = tanh(%1)  @late\n\
         output \"y\" = %1\n\
         output \"t\" = %2\n"
    );
}

#[test]
fn print_graph_shows_repeated_operands_and_attributes() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::BF16, [1, 2, 2, 4]).unwrap();
    let sq = b.mul(x, x).unwrap();
    let up = b.upsample_nearest(sq, 2).unwrap();
    let p = b.permute(up, &[0, 3, 1, 2]).unwrap();
    let c = b.cast(p, DType::F32).unwrap();
    b.output("c", c).unwrap();
    let g = b.finish().unwrap();
    assert_eq!(
        print_graph(&g).unwrap(),
        "%0: bf16[1,2,2,4] = input[\"x\"]\n\
         %1: bf16[1,2,2,4] = mul(%0, %0)\n\
         %2: bf16[1,4,4,4] = upsample_nearest[x2](%1)\n\
         %3: bf16[1,4,4,4] = permute[0,3,1,2](%2)\n\
         %4: f32[1,4,4,4] = cast[f32](%3)\n\
         output \"c\" = %4\n"
    );
}

// ---------------------------------------------------------------------------
// A small end-to-end rewrite
// ---------------------------------------------------------------------------

#[test]
fn rewrite_then_clean_up_preserves_semantics() {
    // y = (x + x) * 0.5 rewritten to y = x: outputs equal before and after.
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [4]).unwrap();
    let twice = b.add(x, x).unwrap();
    let y = b.mul_scalar(twice, 0.5).unwrap();
    let z = b.unary(UnaryOp::Square, y).unwrap();
    b.output("z", z).unwrap();
    let mut g = b.finish().unwrap();
    let inputs = feeds(&[("x", Tensor::new([4], vec![1.0, -2.0, 0.5, 3.0]).unwrap())]);
    let before = interp::run(&g, &inputs).unwrap();

    g.replace_all_uses(y, x).unwrap();
    assert_eq!(g.remove_dead_nodes(), 2);
    verify(&g).unwrap();
    let live: HashSet<NodeId> = g.node_ids().into_iter().collect();
    assert_eq!(live, HashSet::from([x, z]));
    let after = interp::run(&g, &inputs).unwrap();
    assert_eq!(before, after);
    assert_eq!(after["z"].data, vec![1.0, 4.0, 0.25, 9.0]);
}
