//! fp8 attention (`[passes] fp8_attention`) on the tiny FLUX models.
//!
//! The tiny presets have 16-wide heads, which the fp8 kernel does not take,
//! so these tests widen them to FLUX.1's 128 (2 heads × 128 = hidden 256,
//! rotary axes 16 + 56 + 56) in bf16. Checked, for tiny-schnell and
//! tiny-dev:
//! - the pass alone rewrites every attention (2 double + 2 single blocks:
//!   4), with one per-tensor scale and one quantize per q, k and v, and the
//!   model's output moves from the unquantized graph's by no more than
//!   [`TINY_MODEL_TOL`] on random weights;
//! - the whole pipeline with `fp8 = "dynamic-row"` and `fp8_attention =
//!   true` has 4 scaled attentions next to its 20 scaled linears, and none
//!   with `fp8_attention` off or with the presets' own 16-wide heads.

use std::collections::HashMap;
use std::path::Path;

use fluxc_ir::interp::{self, Tensor};
use fluxc_ir::{verify, Graph, NodeId, Op};
use fluxc_models::{build_graph, ModelConfig};
use fluxc_passes::fp8_attention::insert_fp8_attention;
use fluxc_passes::pipeline::optimize;
use fluxc_passes::{Fp8Mode, Fp8Policy};

/// Relative L2 allowed between a tiny model with fp8 attention and the same
/// model without. One fp8 attention moves its own output by 3–4% (e4m3 v
/// and probabilities, see `passes/tests/fp8_attention.rs`); in the model
/// each attention output goes through an output projection into the
/// residual stream (gated by the modulation), next to the stream itself
/// and the MLPs, so the final output moves by a fraction of that.
/// Measured on random weights (q and k scaled by their norms' bound, v by
/// its absmax): 5.5e-3 and 6.4e-3 (tiny-schnell), 5.3e-3 and 5.4e-3
/// (tiny-dev); the bound is below one attention's own error and about 3×
/// the worst measured.
const TINY_MODEL_TOL: f64 = 2e-2;

/// `preset` in bf16 with 128-wide heads and `passes` lines appended to its
/// `[passes]`.
fn wide_heads(preset: &str, passes: &str) -> ModelConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("{preset}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut edited = text
        .replace("dtype = \"f32\"", "dtype = \"bf16\"")
        .replace("attention_head_dim = 16", "attention_head_dim = 128")
        .replace("hidden_size = 32", "hidden_size = 256")
        .replace(
            "axes_dims_rope = [4, 6, 6]",
            "axes_dims_rope = [16, 56, 56]",
        );
    assert_ne!(edited, text, "{preset}: nothing replaced");
    edited.push_str(passes);
    ModelConfig::from_toml_str(&edited, &path).unwrap()
}

/// Random inputs for every graph input: activations in [-1, 1), matrices
/// scaled by 1/√fan_in like a linear's initialization, vectors (norm
/// weights and biases) near 1, so activations stay O(1) through the blocks.
fn random_inputs(graph: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    graph
        .inputs()
        .into_iter()
        .map(|id| {
            let node = graph.node(id);
            let Op::Input { name, .. } = &node.op else {
                unreachable!("inputs() lists inputs")
            };
            let dims = node.ty.shape.dims().to_vec();
            let n = node.ty.shape.numel();
            let data: Vec<f32> = match (node.op.is_weight(), dims.len()) {
                (true, 2) => {
                    let scale = 1.0 / (dims[1] as f32).sqrt();
                    (0..n).map(|_| next() * scale).collect()
                }
                (true, _) => (0..n).map(|_| 1.0 + 0.1 * next()).collect(),
                (false, _) => (0..n).map(|_| next()).collect(),
            };
            (name.clone(), Tensor::new(dims, data).unwrap())
        })
        .collect()
}

fn count(graph: &Graph, kind: &str) -> usize {
    fluxc_ir::GraphStats::of(graph).ops(kind)
}

#[test]
fn the_pass_rewrites_every_attention_of_the_tiny_models() {
    for preset in ["tiny-schnell", "tiny-dev"] {
        let cfg = wide_heads(preset, "");
        let original = build_graph(&cfg).unwrap();
        assert_eq!(count(&original, "attention"), 4, "{preset}");
        let policy = Fp8Policy {
            attention: true,
            ..Fp8Policy::default()
        };
        let mut g = original.clone();
        let n = insert_fp8_attention(&mut g, Fp8Mode::DynamicRow, &policy).unwrap();
        verify(&g).unwrap();
        assert_eq!(n, 4, "{preset}");
        assert_eq!(count(&g, "scaled_attention"), 4, "{preset}");
        assert_eq!(count(&g, "attention"), 0, "{preset}");
        // q, k and v of each attention are distinct tensors; v is
        // quantized by the attention itself; the double blocks' q and k
        // part by part (text, image).
        assert_eq!(count(&g, "dynamic_scale"), 12, "{preset}");
        assert_eq!(count(&g, "quantize"), 12, "{preset}");
        for seed in [1, 2] {
            let inputs = random_inputs(&original, seed);
            let before = interp::run(&original, &inputs).unwrap()["sample"].clone();
            let after = interp::run(&g, &inputs).unwrap()["sample"].clone();
            let error = after.rel_l2(&before);
            println!("{preset} seed {seed}: fp8 attention vs bf16, relative L2 {error:.3e}");
            assert!(error <= TINY_MODEL_TOL, "{preset} seed {seed}: {error:e}");
            assert!(
                error > 1e-4,
                "{preset} seed {seed}: nothing changed? {error:e}"
            );
        }
    }
}

#[test]
fn the_pipeline_quantizes_attention_with_fp8_unless_told_not_to() {
    let fp8 = "fp8 = \"dynamic-row\"\n";
    for (preset, passes, scaled) in [
        ("tiny-schnell", format!("{fp8}fp8_attention = true\n"), 4),
        ("tiny-dev", format!("{fp8}fp8_attention = true\n"), 4),
        ("tiny-schnell", format!("{fp8}fp8_attention = false\n"), 0),
        // On by default with fp8.
        ("tiny-schnell", fp8.to_string(), 4),
        // fp8 off: the attention switch alone does nothing.
        ("tiny-schnell", "fp8_attention = true\n".to_string(), 0),
    ] {
        let cfg = wide_heads(preset, &passes);
        let o = optimize(build_graph(&cfg).unwrap(), &cfg.passes.options()).unwrap();
        let what = format!("{preset} with {passes:?}");
        assert_eq!(count(&o.graph, "scaled_attention"), scaled, "{what}");
        assert_eq!(count(&o.graph, "attention"), 4 - scaled, "{what}");
        let linears = if passes.starts_with(fp8) { 20 } else { 0 };
        assert_eq!(count(&o.graph, "scaled_linear"), linears, "{what}");
    }
}

#[test]
fn the_presets_own_narrow_heads_stay_bf16() {
    for preset in ["tiny-schnell", "tiny-dev"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("{preset}.toml"));
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("dtype = \"f32\"", "dtype = \"bf16\"")
            + "fp8 = \"dynamic-tensor\"\nfp8_attention = true\n";
        let cfg = ModelConfig::from_toml_str(&text, &path).unwrap();
        let o = optimize(build_graph(&cfg).unwrap(), &cfg.passes.options()).unwrap();
        assert_eq!(count(&o.graph, "scaled_attention"), 0, "{preset}");
        assert_eq!(count(&o.graph, "attention"), 4, "{preset}");
        assert!(
            o.log
                .iter()
                .any(|l| l.ends_with("0 attentions (per tensor)")),
            "{:?}",
            o.log
        );
    }
}

/// Whether `id` depends on weights only (no activation input upstream).
fn weight_only(graph: &Graph, id: NodeId) -> bool {
    let node = graph.node(id);
    match node.op {
        Op::Input { .. } => node.op.is_weight(),
        _ => graph
            .operands(id)
            .into_iter()
            .all(|o| weight_only(graph, o)),
    }
}

/// q and k are RMS-normalized and rotated in FLUX, so the pass quantizes
/// them by their norms' bound into ±16 (`q / (28·√D)` by `max|w| / 448`, a
/// scale from weights alone: hoisted to load time, no absmax pass per run;
/// the score scale takes 28·√D per operand back), and v by its absmax.
/// Checked on the structure, and on values: no element of q / (28·√D) over
/// its scale passes 16 (bf16 rounding aside), and the bound is not loose by
/// more than the √D it allows for.
#[test]
fn q_and_k_take_their_norm_bound_as_scale() {
    for preset in ["tiny-schnell", "tiny-dev"] {
        let mut g = build_graph(&wide_heads(preset, "")).unwrap();
        let policy = Fp8Policy {
            attention: true,
            ..Fp8Policy::default()
        };
        insert_fp8_attention(&mut g, Fp8Mode::DynamicTensor, &policy).unwrap();
        let attentions: Vec<NodeId> = g
            .node_ids()
            .into_iter()
            .filter(|&id| matches!(g.node(id).op, Op::ScaledAttention { .. }))
            .collect();
        assert_eq!(attentions.len(), 4, "{preset}");
        let mut keep = Vec::new();
        for &a in &attentions {
            // 1/√D, times 28·√D for q and for k.
            let Op::ScaledAttention { scale } = g.node(a).op else {
                unreachable!()
            };
            let expected = 28.0 * 28.0 * 128f32.sqrt();
            assert!(
                (scale.get() / expected - 1.0).abs() < 1e-6,
                "{preset}: {scale}"
            );
            let ops = g.operands(a);
            for (x8, scale, bounded) in [
                (ops[0], ops[1], true),
                (ops[2], ops[3], true),
                (ops[4], ops[5], false),
            ] {
                assert_eq!(weight_only(&g, scale), bounded, "{preset}: scale {scale}");
                assert_eq!(g.node(scale).op.kind_name(), "dynamic_scale", "{preset}");
                if bounded {
                    // The single blocks' q8 is one quantize; the double
                    // blocks' a concat of one per stream.
                    let quantizes = match g.node(x8).op {
                        Op::Concat { axis: 1 } => g.operands(x8),
                        _ => vec![x8],
                    };
                    for q in quantizes {
                        assert_eq!(g.node(q).op.kind_name(), "quantize", "{preset}");
                        let shrunk = g.operands(q)[0];
                        assert_eq!(g.node(shrunk).op.kind_name(), "mul_scalar", "{preset}");
                        let x = g.operands(shrunk)[0];
                        assert_eq!(g.node(x).op.kind_name(), "apply_rope", "{preset}");
                        keep.extend([shrunk, scale]);
                    }
                }
            }
        }
        let values = interp::run_keeping(&g, &random_inputs(&g, 3), &keep).unwrap();
        for pair in keep.chunks(2) {
            let (x, scale) = (&values[&pair[0]], values[&pair[1]].data[0]);
            let amax = x.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let peak = amax / scale;
            println!("{preset}: |q or k| / (28·√D) / scale peaks at {peak:.2} of 16");
            assert!(peak <= 16.0 * (1.0 + 1.0 / 128.0), "{preset}: {peak}");
            assert!(peak >= 16.0 / 128f32.sqrt(), "{preset}: {peak}");
        }
    }
}
