//! Tests of the fusion planner on small hand-built graphs: the partition
//! invariants, each fusion rule and refusal reason, and the dump.

use fluxc_ir::{DType, Graph, GraphBuilder, NodeId, Op, OpClass};
use fluxc_passes::fusion::{
    plan_fusion, FusionPlan, GroupKind, ALREADY_JOINED, ATTENTION_EPILOGUE, CYCLE, EPILOGUE_OFF,
    MOVEMENT_AFTER_GEMM, NO_PROLOGUE, REDUCTION_IN_GEMM, TWO_REDUCTIONS, TWO_SCALES,
    WHOLE_TENSOR_SCALE,
};

const F32: DType = DType::F32;

// ----- helpers ---------------------------------------------------------------

/// `id` with reshapes peeled off.
fn source(graph: &Graph, mut id: NodeId) -> NodeId {
    while matches!(graph.node(id).op, Op::Reshape(_)) {
        id = graph.operands(id)[0];
    }
    id
}

/// Inputs, weights and reshapes: never in a group.
fn is_free(graph: &Graph, id: NodeId) -> bool {
    matches!(graph.node(id).op, Op::Input { .. } | Op::Reshape(_))
}

fn is_pointwise(graph: &Graph, id: NodeId) -> bool {
    matches!(
        graph.node(id).op.class(),
        OpClass::Elementwise | OpClass::Movement
    )
}

/// `(producer, consumer)` edges between compute nodes, through reshapes.
fn compute_edges(graph: &Graph) -> Vec<(NodeId, NodeId)> {
    let live = graph.live_nodes();
    let mut edges = Vec::new();
    for n in graph.node_ids() {
        if !live.contains(&n) || is_free(graph, n) {
            continue;
        }
        for o in graph.operands(n) {
            let p = source(graph, o);
            if !is_free(graph, p) && !edges.contains(&(p, n)) {
                edges.push((p, n));
            }
        }
    }
    edges
}

/// The properties every plan must have, whatever the graph.
fn check_invariants(graph: &Graph, plan: &FusionPlan) {
    let live = graph.live_nodes();
    let order = graph.topo_order().unwrap();
    let pos = |id: NodeId| order.iter().position(|&o| o == id).unwrap();
    // Exactly the live compute nodes, each in exactly one group.
    for id in graph.node_ids() {
        let count = plan.groups.iter().filter(|g| g.nodes.contains(&id)).count();
        let expected = usize::from(live.contains(&id) && !is_free(graph, id));
        assert_eq!(
            count,
            expected,
            "{id} ({}) is in {count} groups",
            graph.node(id).op
        );
    }
    for (g, group) in plan.groups.iter().enumerate() {
        assert!(!group.nodes.is_empty(), "g{g} is empty");
        let positions: Vec<usize> = group.nodes.iter().map(|&n| pos(n)).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "g{g} not in topological order"
        );
        assert!(
            group.nodes.contains(&group.anchor),
            "g{g}'s anchor is not a member"
        );
        let heavy: Vec<NodeId> = group
            .nodes
            .iter()
            .copied()
            .filter(|&n| !is_pointwise(graph, n))
            .collect();
        if group.kind == GroupKind::Pointwise {
            assert!(heavy.is_empty(), "pointwise g{g} holds {heavy:?}");
            // The anchor defines the iteration space: nothing in the group is larger.
            let numel = |n: NodeId| graph.ty(n).shape.numel();
            assert!(group.nodes.iter().all(|&n| numel(n) <= numel(group.anchor)));
        } else {
            // Besides its anchor, a reduction group may hold one per-row fp8
            // scale of a value it computes (the second reduction).
            let second: Vec<NodeId> = heavy
                .iter()
                .copied()
                .filter(|&n| {
                    n != group.anchor
                        && group.kind == GroupKind::Reduction
                        && matches!(graph.node(n).op, Op::DynamicScale { per_row: true, .. })
                })
                .collect();
            assert!(second.len() <= 1, "g{g} holds scales {second:?}");
            let heavy: Vec<NodeId> = heavy.into_iter().filter(|n| !second.contains(n)).collect();
            assert_eq!(
                heavy,
                vec![group.anchor],
                "g{g} must hold exactly its anchor as heavy op"
            );
            assert_eq!(
                graph.node(group.anchor).op.class(),
                group.kind.anchor_class()
            );
        }
    }
    // Groups come in dependency order, so the group graph is acyclic; every
    // edge that crosses groups is explained by a refusal of that consumer
    // naming a producer in that group.
    for (p, n) in compute_edges(graph) {
        let (gp, gn) = (plan.group_of(p).unwrap(), plan.group_of(n).unwrap());
        assert!(gp <= gn, "g{gp} ({p}) feeds the earlier g{gn} ({n})");
        if gp != gn {
            assert!(
                plan.refusals
                    .iter()
                    .any(|r| r.consumer == n && plan.group_of(r.producer) == Some(gp)),
                "no refusal explains {p} -> {n}"
            );
        }
    }
    // The dump's group lines list the same outputs as group_outputs.
    let dump = plan.dump(graph).unwrap();
    let number = |id: NodeId| format!("%{}", pos(id));
    for (g, group) in plan.groups.iter().enumerate() {
        let outputs: Vec<String> = plan
            .group_outputs(graph, g)
            .into_iter()
            .map(number)
            .collect();
        let line = format!(
            "g{g} {} anchor={} nodes={} outputs=[{}]",
            group.kind,
            number(group.anchor),
            group.nodes.len(),
            outputs.join(", ")
        );
        assert!(dump.lines().any(|l| l == line), "no {line:?} in\n{dump}");
    }
    for r in &plan.refusals {
        assert_ne!(
            plan.group_of(r.producer),
            plan.group_of(r.consumer),
            "{r:?}"
        );
        assert!(!r.why.is_empty());
    }
}

/// Plans with and without epilogue fusion, checking the invariants of both.
fn plan(graph: &Graph, epilogue_fusion: bool) -> FusionPlan {
    let plan = plan_fusion(graph, epilogue_fusion).unwrap();
    check_invariants(graph, &plan);
    plan
}

fn same_group(plan: &FusionPlan, nodes: &[NodeId]) -> bool {
    let g = plan.group_of(nodes[0]);
    g.is_some() && nodes.iter().all(|&n| plan.group_of(n) == g)
}

fn refusal(plan: &FusionPlan, producer: NodeId, consumer: NodeId) -> &str {
    plan.refusals
        .iter()
        .find(|r| r.producer == producer && r.consumer == consumer)
        .map(|r| r.why.as_str())
        .unwrap_or_else(|| {
            panic!(
                "no refusal {producer} -> {consumer} in {:#?}",
                plan.refusals
            )
        })
}

/// The op kind names of `nodes`, sorted (independent of the topological order).
fn kinds(graph: &Graph, nodes: &[NodeId]) -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = nodes
        .iter()
        .map(|&n| graph.node(n).op.kind_name())
        .collect();
    kinds.sort_unstable();
    kinds
}

/// The dump line of the node whose text contains `needle`.
fn dump_line<'d>(dump: &'d str, needle: &str) -> &'d str {
    dump.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{dump}"))
}

/// `nn.Linear` with bias in child scope `module`, weights named after the scope.
fn linear(b: &mut GraphBuilder, module: &str, x: NodeId, out: usize) -> NodeId {
    let k = *b.shape(x).last().unwrap();
    b.push_scope(module);
    let w = b
        .weight(&format!("{}.weight", b.scope()), F32, [out, k])
        .unwrap();
    let bias = b
        .weight(&format!("{}.bias", b.scope()), F32, [out])
        .unwrap();
    let y = b.linear(x, w, Some(bias)).unwrap();
    b.pop_scope();
    y
}

/// `[B, C]` → `[B, 1, C]`.
fn per_token(b: &mut GraphBuilder, v: NodeId) -> NodeId {
    let [batch, c] = b.shape(v).try_into().unwrap();
    b.reshape(v, [batch, 1, c]).unwrap()
}

/// FLUX's `LayerNorm(x)·(1 + scale) + shift` with `[B, C]` vectors.
fn norm_modulate(b: &mut GraphBuilder, x: NodeId, shift: NodeId, scale: NodeId) -> [NodeId; 4] {
    let ln = b.layer_norm(x, None, 1e-6).unwrap();
    let scale = per_token(b, scale);
    let scale1 = b.add_scalar(scale, 1.0).unwrap();
    let shift = per_token(b, shift);
    let m = b.mul(ln, scale1).unwrap();
    let out = b.add(m, shift).unwrap();
    [ln, scale1, m, out]
}

/// Nodes of the miniature block, by role.
struct MiniBlock {
    graph: Graph,
    embed: NodeId,
    ada: NodeId,
    ln: NodeId,
    modulated: NodeId,
    fc1: NodeId,
    gelu: NodeId,
    fc2: NodeId,
    gated: NodeId,
    residual: NodeId,
}

/// A miniature double-block MLP half: `x0 = linear(x)`, adaLN params from
/// `linear(silu(temb))`, `LayerNorm → modulate → linear → GELU → linear →
/// gate mul → residual add`.
fn mini_block() -> MiniBlock {
    let (batch, seq, c) = (1, 4, 8);
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [batch, seq, c]).unwrap();
    let temb = b.input("temb", F32, [batch, c]).unwrap();
    let embed = linear(&mut b, "embed", x, c);
    b.push_scope("norm");
    let emb = b.silu(temb).unwrap();
    let ada = linear(&mut b, "linear", emb, 3 * c);
    let [shift, scale, gate] = b.chunk(ada, 1, 3).unwrap().try_into().unwrap();
    let [ln, _, _, modulated] = norm_modulate(&mut b, embed, shift, scale);
    b.pop_scope();
    b.push_scope("ff");
    let fc1 = linear(&mut b, "fc1", modulated, 4 * c);
    let gelu = b.gelu_tanh(fc1).unwrap();
    let fc2 = linear(&mut b, "fc2", gelu, c);
    b.pop_scope();
    let gate = per_token(&mut b, gate);
    let gated = b.mul(gate, fc2).unwrap();
    let residual = b.add(embed, gated).unwrap();
    b.output("out", residual).unwrap();
    MiniBlock {
        graph: b.finish().unwrap(),
        embed,
        ada,
        ln,
        modulated,
        fc1,
        gelu,
        fc2,
        gated,
        residual,
    }
}

/// A fuller double-block-like graph: attention with RMS-normed, roped q/k,
/// output projection with gated residual, then norm2 + MLP.
fn attention_block() -> Graph {
    let (batch, seq, heads, dim) = (1, 4, 2, 4);
    let c = heads * dim;
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [batch, seq, c]).unwrap();
    let temb = b.input("temb", F32, [batch, c]).unwrap();
    let ids = b.input("ids", F32, [seq, 2]).unwrap();
    let rope = b.rope_table(ids, &[2, 2], 10000.0).unwrap();
    let emb = b.silu(temb).unwrap();
    let ada = linear(&mut b, "ada", emb, 6 * c);
    let p: [NodeId; 6] = b.chunk(ada, 1, 6).unwrap().try_into().unwrap();
    let [_, _, _, normed] = norm_modulate(&mut b, x, p[0], p[1]);
    let heads_of = |b: &mut GraphBuilder, name: &str, norm: bool| {
        let y = linear(b, name, normed, c);
        let y = b.reshape(y, [batch, seq, heads, dim]).unwrap();
        if !norm {
            return y;
        }
        let w = b
            .weight(&format!("{name}.norm.weight"), F32, [dim])
            .unwrap();
        let y = b.rms_norm(y, Some(w), 1e-6).unwrap();
        b.apply_rope(y, rope).unwrap()
    };
    let q = heads_of(&mut b, "to_q", true);
    let k = heads_of(&mut b, "to_k", true);
    let v = heads_of(&mut b, "to_v", false);
    let o = b.attention(q, k, v).unwrap();
    let o = b.reshape(o, [batch, seq, c]).unwrap();
    let o = linear(&mut b, "to_out", o, c);
    let gate = per_token(&mut b, p[2]);
    let gated = b.mul(gate, o).unwrap();
    let x = b.add(x, gated).unwrap();
    let [_, _, _, normed] = norm_modulate(&mut b, x, p[3], p[4]);
    let h = linear(&mut b, "fc1", normed, 4 * c);
    let h = b.gelu_tanh(h).unwrap();
    let h = linear(&mut b, "fc2", h, c);
    let gate = per_token(&mut b, p[5]);
    let gated = b.mul(gate, h).unwrap();
    let x = b.add(x, gated).unwrap();
    b.output("out", x).unwrap();
    b.finish().unwrap()
}

// ----- rules ---------------------------------------------------------------

#[test]
fn layer_norm_and_modulate_are_one_kernel() {
    let m = mini_block();
    for on in [true, false] {
        let plan = plan(&m.graph, on);
        let g = plan.group_of(m.ln).unwrap();
        assert_eq!(plan.groups[g].kind, GroupKind::Reduction);
        assert_eq!(plan.groups[g].anchor, m.ln);
        assert_eq!(plan.group_of(m.modulated), Some(g));
        // The `[B,1,C]` slices and `1 + scale` are inlined (recomputed per element).
        assert_eq!(
            kinds(&m.graph, &plan.groups[g].nodes),
            ["add", "add_scalar", "layer_norm", "mul", "slice", "slice"]
        );
        assert_eq!(plan.group_outputs(&m.graph, g), vec![m.modulated]);
        // The LayerNorm reads the embedder GEMM, which it cannot join.
        assert_eq!(refusal(&plan, m.embed, m.ln), REDUCTION_IN_GEMM);
        // The slices of the adaLN GEMM output are not its epilogue.
        let slices = plan.groups[g]
            .nodes
            .iter()
            .copied()
            .filter(|&n| m.graph.node(n).op.kind_name() == "slice");
        for s in slices {
            let why = refusal(&plan, m.ada, s);
            assert_eq!(
                why,
                if on {
                    MOVEMENT_AFTER_GEMM
                } else {
                    EPILOGUE_OFF
                }
            );
        }
    }
}

#[test]
fn shared_broadcast_operand_is_not_inlined() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [2, 4, 8]).unwrap();
    let y = b.input("y", F32, [2, 4, 8]).unwrap();
    let s = b.input("s", F32, [2, 1, 8]).unwrap();
    let s1 = b.add_scalar(s, 1.0).unwrap();
    let ln_x = b.layer_norm(x, None, 1e-6).unwrap();
    let a = b.mul(ln_x, s1).unwrap();
    let ln_y = b.layer_norm(y, None, 1e-6).unwrap();
    let c = b.mul(ln_y, s1).unwrap();
    b.output("a", a).unwrap();
    b.output("c", c).unwrap();
    let graph = b.finish().unwrap();
    let plan = plan(&graph, true);
    assert!(same_group(&plan, &[ln_x, a]));
    assert!(same_group(&plan, &[ln_y, c]));
    assert_eq!(plan.groups[plan.group_of(s1).unwrap()].nodes, vec![s1]);
    let why = refusal(&plan, s1, a);
    assert!(
        why.contains("not inlined: its values are also read outside the consumer's group"),
        "{why}"
    );
}

#[test]
fn rms_norm_and_apply_rope_are_one_kernel() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [1, 4, 8]).unwrap();
    let ids = b.input("ids", F32, [4, 2]).unwrap();
    let table = b.rope_table(ids, &[2, 2], 10000.0).unwrap();
    let w = b.weight("q.weight", F32, [8, 8]).unwrap();
    let q = b.linear(x, w, None).unwrap();
    let heads = b.reshape(q, [1, 4, 2, 4]).unwrap();
    let nw = b.weight("norm_q.weight", F32, [4]).unwrap();
    let normed = b.rms_norm(heads, Some(nw), 1e-6).unwrap();
    let roped = b.apply_rope(normed, table).unwrap();
    b.output("q", roped).unwrap();
    let graph = b.finish().unwrap();
    let plan = plan(&graph, true);
    let g = plan.group_of(normed).unwrap();
    assert_eq!(plan.groups[g].kind, GroupKind::Reduction);
    assert_eq!(plan.groups[g].nodes, vec![normed, roped]);
    // The reshape is a free view: in no group, and the norm is seen reading the GEMM.
    assert_eq!(plan.group_of(heads), None);
    assert_eq!(refusal(&plan, q, normed), REDUCTION_IN_GEMM);
    let t = plan.group_of(table).unwrap();
    assert_eq!(plan.groups[t].kind, GroupKind::Table);
    assert_eq!(plan.groups[t].nodes, vec![table]);
    assert_eq!(
        refusal(&plan, table, roped),
        "output shape [1,4,2,4] differs from the table's output [4,2,2]"
    );
}

#[test]
fn a_slice_seen_through_a_reshape_is_a_rms_norm_prologue() {
    // Fused q/k/v: q is a slice of the GEMM output, reshaped to heads. The
    // reshape keeps row-major order, so the slice kernel's iteration space
    // [1,4,8] is the norm's input [1,4,2,4]: slice + norm + rope, one kernel.
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [1, 4, 8]).unwrap();
    let ids = b.input("ids", F32, [4, 2]).unwrap();
    let table = b.rope_table(ids, &[2, 2], 10000.0).unwrap();
    let qkv = linear(&mut b, "qkv", x, 24);
    let q = b.slice(qkv, 2, 0, 8).unwrap();
    let heads = b.reshape(q, [1, 4, 2, 4]).unwrap();
    let w = b.weight("norm_q.weight", F32, [4]).unwrap();
    let normed = b.rms_norm(heads, Some(w), 1e-6).unwrap();
    let roped = b.apply_rope(normed, table).unwrap();
    b.output("q", roped).unwrap();
    let graph = b.finish().unwrap();
    for on in [true, false] {
        let plan = plan(&graph, on);
        let g = plan.group_of(normed).unwrap();
        assert_eq!(plan.groups[g].kind, GroupKind::Reduction);
        assert_eq!(plan.groups[g].nodes, vec![q, normed, roped]);
        assert_eq!(plan.group_outputs(&graph, g), vec![roped]);
        let why = refusal(&plan, qkv, q);
        assert_eq!(
            why,
            if on {
                MOVEMENT_AFTER_GEMM
            } else {
                EPILOGUE_OFF
            }
        );
    }
}

#[test]
fn residual_add_is_a_layer_norm_prologue_with_two_outputs() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [2, 4, 8]).unwrap();
    let y = b.input("y", F32, [2, 4, 8]).unwrap();
    let gate = b.input("gate", F32, [2, 1, 8]).unwrap();
    let gated = b.mul(gate, y).unwrap();
    let sum = b.add(x, gated).unwrap();
    let normed = b.layer_norm(sum, None, 1e-6).unwrap();
    let scaled = b.mul_scalar(normed, 2.0).unwrap();
    b.output("sum", sum).unwrap();
    b.output("normed", scaled).unwrap();
    let graph = b.finish().unwrap();
    let plan = plan(&graph, true);
    assert_eq!(plan.groups.len(), 1);
    let group = &plan.groups[0];
    assert_eq!(group.kind, GroupKind::Reduction);
    assert_eq!(group.anchor, normed);
    assert_eq!(group.nodes, vec![gated, sum, normed, scaled]);
    assert_eq!(plan.group_outputs(&graph, 0), vec![sum, scaled]);
    assert!(plan.refusals.is_empty());
}

#[test]
fn residual_after_a_gemm_epilogue_is_no_prologue() {
    // With epilogue fusion the residual add lives in the GEMM group, which
    // the next LayerNorm cannot join; without it, the add group is the
    // LayerNorm's prologue.
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [2, 4, 8]).unwrap();
    let y = linear(&mut b, "proj", x, 8);
    let sum = b.add(x, y).unwrap();
    let normed = b.layer_norm(sum, None, 1e-6).unwrap();
    b.output("sum", sum).unwrap();
    b.output("normed", normed).unwrap();
    let graph = b.finish().unwrap();
    let on = plan(&graph, true);
    assert!(same_group(&on, &[y, sum]));
    assert_eq!(refusal(&on, sum, normed), REDUCTION_IN_GEMM);
    let off = plan(&graph, false);
    assert!(same_group(&off, &[sum, normed]));
    assert_eq!(refusal(&off, y, sum), EPILOGUE_OFF);
}

#[test]
fn gelu_joins_the_gemm_only_with_epilogue_fusion() {
    let m = mini_block();
    let on = plan(&m.graph, true);
    let g = on.group_of(m.fc1).unwrap();
    assert_eq!(on.groups[g].kind, GroupKind::Gemm);
    assert_eq!(on.groups[g].nodes, vec![m.fc1, m.gelu]);
    assert_eq!(on.group_outputs(&m.graph, g), vec![m.gelu]);
    assert!(!on.refusals.iter().any(|r| r.consumer == m.gelu));

    let off = plan(&m.graph, false);
    assert_ne!(off.group_of(m.fc1), off.group_of(m.gelu));
    assert_eq!(refusal(&off, m.fc1, m.gelu), EPILOGUE_OFF);
    assert_eq!(
        off.groups[off.group_of(m.gelu).unwrap()].kind,
        GroupKind::Pointwise
    );
}

#[test]
fn gated_residual_joins_its_gemm_not_the_residual_stream() {
    let m = mini_block();
    let on = plan(&m.graph, true);
    let g = on.group_of(m.fc2).unwrap();
    // The gate slice is inlined into the epilogue.
    assert_eq!(
        kinds(&m.graph, &on.groups[g].nodes),
        ["add", "linear", "mul", "slice"]
    );
    assert!(same_group(&on, &[m.fc2, m.gated, m.residual]));
    assert_eq!(refusal(&on, m.embed, m.residual), ALREADY_JOINED);

    let off = plan(&m.graph, false);
    assert!(same_group(&off, &[m.gated, m.residual]));
    assert_eq!(refusal(&off, m.fc2, m.gated), EPILOGUE_OFF);
    assert_eq!(refusal(&off, m.embed, m.residual), EPILOGUE_OFF);
}

#[test]
fn attention_output_is_never_fused() {
    let mut b = GraphBuilder::new();
    let q = b.input("q", F32, [1, 4, 2, 8]).unwrap();
    let k = b.input("k", F32, [1, 4, 2, 8]).unwrap();
    let v = b.input("v", F32, [1, 4, 2, 8]).unwrap();
    let q = b.mul_scalar(q, 0.5).unwrap();
    let o = b.attention(q, k, v).unwrap();
    let scaled = b.mul_scalar(o, 2.0).unwrap();
    let probs = b.softmax(o).unwrap();
    b.output("scaled", scaled).unwrap();
    b.output("probs", probs).unwrap();
    let graph = b.finish().unwrap();
    for on in [true, false] {
        let plan = plan(&graph, on);
        let g = plan.group_of(o).unwrap();
        assert_eq!(plan.groups[g].kind, GroupKind::Attention);
        assert_eq!(plan.groups[g].nodes, vec![o]);
        assert_eq!(refusal(&plan, o, scaled), ATTENTION_EPILOGUE);
        assert_eq!(refusal(&plan, o, probs), ATTENTION_EPILOGUE);
        assert_eq!(refusal(&plan, q, o), NO_PROLOGUE);
    }
}

#[test]
fn a_gemm_never_takes_a_prologue() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [2, 8]).unwrap();
    let a = b.silu(x).unwrap();
    let y = linear(&mut b, "proj", a, 4);
    b.output("y", y).unwrap();
    let graph = b.finish().unwrap();
    for on in [true, false] {
        let plan = plan(&graph, on);
        assert_eq!(plan.groups.len(), 2);
        assert_eq!(plan.groups[0].nodes, vec![a]);
        assert_eq!(plan.groups[1].nodes, vec![y]);
        assert_eq!(refusal(&plan, a, y), NO_PROLOGUE);
    }
    // In the block, the MLP's GEMMs never absorb what feeds them.
    let m = mini_block();
    for on in [true, false] {
        let plan = plan(&m.graph, on);
        assert_eq!(refusal(&plan, m.modulated, m.fc1), NO_PROLOGUE);
        assert_eq!(refusal(&plan, m.gelu, m.fc2), NO_PROLOGUE);
        for group in plan.groups.iter().filter(|g| g.kind == GroupKind::Gemm) {
            let before: Vec<NodeId> = group
                .nodes
                .iter()
                .copied()
                .take_while(|&n| n != group.anchor)
                .collect();
            assert!(
                before
                    .iter()
                    .all(|&n| m.graph.node(n).op.kind_name() == "slice"),
                "only inlined epilogue operands precede the GEMM: {before:?}"
            );
        }
    }
}

#[test]
fn one_reduction_per_kernel() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [2, 8]).unwrap();
    let a = b.add_scalar(x, 1.0).unwrap();
    let ln = b.layer_norm(a, None, 1e-6).unwrap();
    let sm = b.softmax(ln).unwrap();
    b.output("sm", sm).unwrap();
    let graph = b.finish().unwrap();
    let plan = plan(&graph, true);
    assert!(same_group(&plan, &[a, ln]));
    assert_ne!(plan.group_of(ln), plan.group_of(sm));
    assert_eq!(refusal(&plan, ln, sm), TWO_REDUCTIONS);
}

/// `x → LayerNorm → modulate → [scale → quantize]`, with fp8 scales per
/// row or per tensor; returns the graph and (ln, modulated, scale, quantized).
fn norm_then_quantize(per_row: bool) -> (Graph, [NodeId; 4]) {
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [1, 6, 16]).unwrap();
    let shift = b.input("shift", F32, [1, 16]).unwrap();
    let scale = b.input("scale", F32, [1, 16]).unwrap();
    let [ln, _, _, modulated] = norm_modulate(&mut b, x, shift, scale);
    let s = b.dynamic_scale(modulated, DType::F8E4M3, per_row).unwrap();
    let q = b.quantize(modulated, s, DType::F8E4M3).unwrap();
    b.output("q", q).unwrap();
    b.output("s", s).unwrap();
    (b.finish().unwrap(), [ln, modulated, s, q])
}

#[test]
fn a_row_scale_and_its_quantize_join_the_norm_kernel() {
    let (graph, [ln, modulated, s, q]) = norm_then_quantize(true);
    let plan = plan(&graph, true);
    assert!(same_group(&plan, &[ln, modulated, s, q]));
    let g = plan.group_of(ln).unwrap();
    assert_eq!(plan.groups[g].kind, GroupKind::Reduction);
    assert_eq!(plan.groups[g].anchor, ln);
    // The kernel writes the fp8 values and the scales, not the modulated
    // activation.
    assert_eq!(plan.group_outputs(&graph, g), [s, q]);
}

#[test]
fn a_row_scale_takes_a_pointwise_prologue_and_the_quantize_as_tail() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [1, 6, 16]).unwrap();
    let y = b.input("y", F32, [1, 6, 8]).unwrap();
    let g = b.gelu_tanh(y).unwrap();
    let cat = b.concat(&[x, g], 2).unwrap();
    let s = b.dynamic_scale(cat, DType::F8E4M3, true).unwrap();
    let q = b.quantize(cat, s, DType::F8E4M3).unwrap();
    b.output("q", q).unwrap();
    b.output("s", s).unwrap();
    let graph = b.finish().unwrap();
    let plan = plan(&graph, true);
    assert!(same_group(&plan, &[g, cat, s, q]));
    assert_eq!(plan.groups[plan.group_of(s).unwrap()].anchor, s);
}

#[test]
fn one_scale_per_kernel() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [1, 6, 16]).unwrap();
    let s1 = b.dynamic_scale(x, DType::F8E4M3, true).unwrap();
    let q1 = b.quantize(x, s1, DType::F8E4M3).unwrap();
    let back = b.cast(q1, F32).unwrap();
    let s2 = b.dynamic_scale(back, DType::F8E4M3, true).unwrap();
    b.output("s2", s2).unwrap();
    let graph = b.finish().unwrap();
    let plan = plan(&graph, true);
    assert!(same_group(&plan, &[s1, q1, back]));
    assert_ne!(plan.group_of(s1), plan.group_of(s2));
    assert_eq!(refusal(&plan, back, s2), TWO_SCALES);
}

#[test]
fn a_tensor_scale_is_its_own_kernel_and_its_quantize_another() {
    let (graph, [ln, modulated, s, q]) = norm_then_quantize(false);
    let plan = plan(&graph, true);
    assert!(same_group(&plan, &[ln, modulated]));
    let (gn, gs, gq) = (plan.group_of(ln), plan.group_of(s), plan.group_of(q));
    assert!(gn != gs && gs != gq && gn != gq, "{gn:?} {gs:?} {gq:?}");
    assert_eq!(refusal(&plan, modulated, s), WHOLE_TENSOR_SCALE);
    assert_eq!(refusal(&plan, s, q), WHOLE_TENSOR_SCALE);
}

#[test]
fn merges_that_would_make_a_cycle_are_refused() {
    // a = exp(x); h = linear(a); b = a + h. Without epilogue fusion `b`
    // cannot join h's GEMM, and joining a's group would make a -> h -> b a
    // cycle between groups.
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [2, 8]).unwrap();
    let a = b.unary(fluxc_ir::UnaryOp::Exp, x).unwrap();
    let h = linear(&mut b, "proj", a, 8);
    let sum = b.add(a, h).unwrap();
    b.output("sum", sum).unwrap();
    let graph = b.finish().unwrap();
    let off = plan(&graph, false);
    assert_eq!(off.groups.len(), 3);
    assert_eq!(refusal(&off, h, sum), EPILOGUE_OFF);
    let why = refusal(&off, a, sum);
    assert!(why.starts_with(CYCLE), "{why}");
    // With epilogue fusion the add joins the GEMM; a's group still may not.
    let on = plan(&graph, true);
    assert!(same_group(&on, &[h, sum]));
    assert!(refusal(&on, a, sum).starts_with(ALREADY_JOINED));
}

#[test]
fn dead_nodes_inputs_and_reshapes_are_in_no_group() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", F32, [2, 8]).unwrap();
    let dead = b.unary(fluxc_ir::UnaryOp::Exp, x).unwrap();
    let r = b.reshape(x, [16]).unwrap();
    let y = b.silu(r).unwrap();
    b.output("y", y).unwrap();
    let graph = b.finish().unwrap();
    let plan = plan(&graph, true);
    assert_eq!(plan.groups.len(), 1);
    for id in [x, dead, r] {
        assert_eq!(plan.group_of(id), None);
    }
    let dump = plan.dump(&graph).unwrap();
    // Tags are padded to the widest one ("dead"), then two spaces.
    assert!(dump_line(&dump, "= exp(").starts_with("dead  %"), "{dump}");
    assert!(
        dump_line(&dump, "= reshape[16](").starts_with("-     %"),
        "{dump}"
    );
    assert!(dump_line(&dump, "= silu(").starts_with("g0    %"), "{dump}");
    assert!(
        dump_line(&dump, "= input[\"x\"]").starts_with("-     %0: f32[2,8]"),
        "{dump}"
    );
    let silu = dump_line(&dump, "= silu(").split(':').next().unwrap();
    let silu = silu.trim_start_matches("g0").trim();
    let group_line = format!("\ng0 pointwise anchor={silu} nodes=1 outputs=[{silu}]\n");
    assert!(dump.ends_with(&group_line), "{dump}");
}

#[test]
fn attention_block_partition() {
    let graph = attention_block();
    for on in [true, false] {
        let plan = plan(&graph, on);
        let count = |kind: GroupKind| plan.groups.iter().filter(|g| g.kind == kind).count();
        assert_eq!(count(GroupKind::Attention), 1);
        assert_eq!(count(GroupKind::Table), 1);
        // ada, q, k, v, to_out, fc1, fc2
        assert_eq!(count(GroupKind::Gemm), 7);
        // norm1, rms q, rms k, norm2
        assert_eq!(count(GroupKind::Reduction), 4);
        for group in plan
            .groups
            .iter()
            .filter(|g| g.kind == GroupKind::Reduction)
        {
            let last = *group.nodes.last().unwrap();
            let anchor = graph.node(group.anchor).op.kind_name();
            let tail = graph.node(last).op.kind_name();
            match anchor {
                "rms_norm" => assert_eq!(tail, "apply_rope"),
                "layer_norm" => assert_eq!(tail, "add"),
                other => panic!("unexpected reduction {other}"),
            }
        }
        // Without epilogue fusion the gated residual add becomes norm2's prologue.
        let norm2 = plan
            .groups
            .iter()
            .filter(|g| g.kind == GroupKind::Reduction)
            .nth(3)
            .unwrap();
        assert_eq!(norm2.nodes.len(), if on { 6 } else { 9 });
    }
}

// ----- dump ----------------------------------------------------------------

#[test]
fn dump_is_deterministic_and_annotated() {
    let a = mini_block();
    let b = mini_block();
    for on in [true, false] {
        let dump = plan(&a.graph, on).dump(&a.graph).unwrap();
        assert_eq!(dump, plan(&b.graph, on).dump(&b.graph).unwrap());
        assert_eq!(dump, plan(&a.graph, on).dump(&a.graph).unwrap());
        assert!(dump.contains("  %0: f32[1,4,8] = input[\"x\"]\n"), "{dump}");
        assert!(dump.contains("output \"out\" = %"), "{dump}");
        assert!(dump.contains(" reduction anchor=%"), "{dump}");
        let gemm_lines = dump.lines().filter(|l| l.contains(" gemm anchor=")).count();
        assert_eq!(gemm_lines, 4, "{dump}");
        let refused_gelu = dump
            .lines()
            .any(|l| l.starts_with("refused %") && l.ends_with(": epilogue_fusion is off"));
        assert_eq!(refused_gelu, !on, "{dump}");
    }
}

#[test]
fn snapshot_mini_block_epilogue_on() {
    let m = mini_block();
    insta::assert_snapshot!(plan(&m.graph, true).dump(&m.graph).unwrap());
}

#[test]
fn snapshot_mini_block_epilogue_off() {
    let m = mini_block();
    insta::assert_snapshot!(plan(&m.graph, false).dump(&m.graph).unwrap());
}
