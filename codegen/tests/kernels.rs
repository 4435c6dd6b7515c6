//! Generated kernels and schedules of small hand-built graphs: what steps a
//! fused block lowers to, that every kernel compiles for sm_90a (where NVRTC
//! is available), and that schedules validate.

mod common;

use fluxc_artifact::{GemmEpilogue, Step};
use fluxc_codegen::{generate, CodegenOptions, Generated};
use fluxc_ir::{DType, Graph, GraphBuilder, NodeId};
use fluxc_passes::pipeline::optimize;
use fluxc_passes::PassOptions;

fn linear(b: &mut GraphBuilder, x: NodeId, name: &str, n: usize, dt: DType) -> NodeId {
    let k = *b.shape(x).last().unwrap();
    let w = b.weight(&format!("{name}.weight"), dt, [n, k]).unwrap();
    let bias = b.weight(&format!("{name}.bias"), dt, [n]).unwrap();
    b.linear(x, w, Some(bias)).unwrap()
}

/// A miniature double-block stream: modulated LayerNorm, q/k/v with RMSNorm
/// and RoPE, attention, gated residual, GELU MLP.
fn mini_block(dt: DType) -> Graph {
    let (s, h, d) = (20, 2, 64);
    let c = h * d;
    let mut b = GraphBuilder::new();
    let x = b.input("x", dt, [1, s, c]).unwrap();
    let temb = b.input("temb", dt, [1, c]).unwrap();
    let ids = b.input("ids", DType::F32, [s, 3]).unwrap();
    let rope = b.rope_table(ids, &[16, 24, 24], 10000.0).unwrap();
    let act = b.silu(temb).unwrap();
    let m = linear(&mut b, act, "mod", 3 * c, dt);
    let parts = b.chunk(m, 1, 3).unwrap();
    let [shift, scale, gate] = [parts[0], parts[1], parts[2]];
    let ln = b.layer_norm(x, None, 1e-6).unwrap();
    let scale = b.reshape(scale, [1, 1, c]).unwrap();
    let scale = b.add_scalar(scale, 1.0).unwrap();
    let shift = b.reshape(shift, [1, 1, c]).unwrap();
    let y = b.mul(ln, scale).unwrap();
    let y = b.add(y, shift).unwrap();
    let mut heads = Vec::new();
    for name in ["q", "k", "v"] {
        let p = linear(&mut b, y, name, c, dt);
        let p = b.reshape(p, [1, s, h, d]).unwrap();
        heads.push(if name == "v" {
            p
        } else {
            let w = b.weight(&format!("norm_{name}.weight"), dt, [d]).unwrap();
            let p = b.rms_norm(p, Some(w), 1e-6).unwrap();
            b.apply_rope(p, rope).unwrap()
        });
    }
    let o = b.attention(heads[0], heads[1], heads[2]).unwrap();
    let o = b.reshape(o, [1, s, c]).unwrap();
    let o = linear(&mut b, o, "out", c, dt);
    let gate = b.reshape(gate, [1, 1, c]).unwrap();
    let o = b.mul(gate, o).unwrap();
    let x = b.add(x, o).unwrap();
    let f = linear(&mut b, x, "fc1", 4 * c, dt);
    let f = b.gelu_tanh(f).unwrap();
    let f = linear(&mut b, f, "fc2", c, dt);
    let out = b.add(x, f).unwrap();
    b.output("out", out).unwrap();
    b.finish().unwrap()
}

fn generated(graph: Graph, epilogue_fusion: bool) -> Generated {
    let options = PassOptions {
        epilogue_fusion,
        fuse_qkv_min_rows: 1,
        ..PassOptions::default()
    };
    let optimized = optimize(graph, &options).unwrap();
    let opts = CodegenOptions {
        model_name: "mini".into(),
        layouts: Vec::new(),
        reuse_memory: true,
    };
    generate(&optimized, &opts).unwrap()
}

#[test]
fn mini_block_lowers_to_gemms_attention_and_kernels() {
    for epilogue in [true, false] {
        let g = generated(mini_block(DType::BF16), epilogue);
        g.schedule.validate().unwrap();
        let gemms: Vec<_> = g
            .schedule
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Gemm(gemm) => Some(gemm),
                _ => None,
            })
            .collect();
        // modulation, fused q/k/v, out, fc1, fc2
        assert_eq!(gemms.len(), 5, "epilogue fusion {epilogue}");
        let fc1 = gemms.iter().find(|g| g.m == 512).unwrap();
        let expected = if epilogue {
            GemmEpilogue::GeluBias
        } else {
            GemmEpilogue::Bias
        };
        assert_eq!(fc1.epilogue, expected);
        assert_eq!((fc1.n, fc1.k), (20, 128));
        let attention = g
            .schedule
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Attention(_)))
            .count();
        assert_eq!(attention, 1);
        assert!(g.kernels_cu.contains("attention_d64_bf16"));
    }
}

#[test]
fn generated_kernels_compile_for_sm90a() {
    if let Some(why) = common::nvrtc_unavailable() {
        println!("SKIP generated_kernels_compile_for_sm90a: {why}");
        return;
    }
    for (dt, epilogue) in [
        (DType::BF16, true),
        (DType::BF16, false),
        (DType::F32, true),
    ] {
        let mut graph = mini_block(dt);
        if dt == DType::F32 {
            // The attention kernel is bf16-only; exercise f32 kernels without it.
            graph = f32_norm_graph();
        }
        let g = generated(graph, epilogue);
        let (cubin, log) = common::compile_cubin(&g.kernels_cu, "kernels", &common::include_dir())
            .unwrap_or_else(|e| panic!("{e}\n--- kernels.cu ---\n{}", g.kernels_cu));
        assert!(!cubin.is_empty(), "{log}");
    }
}

/// LayerNorm, RMSNorm over heads, softmax and a concat in f32.
fn f32_norm_graph() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 6, 48]).unwrap();
    let y = b.input("y", DType::F32, [2, 3, 48]).unwrap();
    let j = b.concat(&[x, y], 1).unwrap();
    let ln = b.layer_norm(j, None, 1e-5).unwrap();
    let r = b.reshape(ln, [2, 9, 3, 16]).unwrap();
    let w = b.weight("w", DType::F32, [16]).unwrap();
    let r = b.rms_norm(r, Some(w), 1e-6).unwrap();
    let s = b.softmax(r).unwrap();
    let s = b.silu(s).unwrap();
    b.output("s", s).unwrap();
    b.finish().unwrap()
}

#[test]
#[ignore]
fn dump_mini_block() {
    let g = generated(mini_block(DType::BF16), true);
    let start = g.kernels_cu.find("k0_").unwrap() - 40;
    println!("{}", &g.kernels_cu[start..]);
    println!(
        "{}",
        serde_json::to_string_pretty(&g.schedule.steps).unwrap()
    );
}
