//! Generated kernels and schedules of small hand-built graphs: what steps a
//! fused block lowers to, that every kernel compiles for sm_90a (where NVRTC
//! is available), and that schedules validate.

mod common;

use fluxc_artifact::{Arg, ElemType, GemmEpilogue, Launch, Region, ScaleMode, Step};
use fluxc_codegen::{generate, CodegenOptions, Generated};
use fluxc_ir::{DType, Graph, GraphBuilder, NodeId};
use fluxc_passes::pipeline::optimize;
use fluxc_passes::{Fp8Mode, Fp8Policy, PassOptions};

fn linear(b: &mut GraphBuilder, x: NodeId, name: &str, n: usize, dt: DType) -> NodeId {
    let k = *b.shape(x).last().unwrap();
    let w = b.weight(&format!("{name}.weight"), dt, [n, k]).unwrap();
    let bias = b.weight(&format!("{name}.bias"), dt, [n]).unwrap();
    b.linear(x, w, Some(bias)).unwrap()
}

/// A miniature double-block stream: modulated LayerNorm, q/k/v with RMSNorm
/// and RoPE, attention, gated residual, GELU MLP.
fn mini_block(dt: DType) -> Graph {
    mini_block_with(dt, 64)
}

/// [`mini_block`] with `d`-wide heads (a multiple of 8).
fn mini_block_with(dt: DType, d: usize) -> Graph {
    let (s, h) = (20, 2);
    let c = h * d;
    let mut b = GraphBuilder::new();
    let x = b.input("x", dt, [1, s, c]).unwrap();
    let temb = b.input("temb", dt, [1, c]).unwrap();
    let ids = b.input("ids", DType::F32, [s, 3]).unwrap();
    let rope = b
        .rope_table(ids, &[d / 4, d * 3 / 8, d * 3 / 8], 10000.0)
        .unwrap();
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
        // fused q/k/v, out, fc1, fc2; the modulation linear (one input
        // row) is the one-row kernel.
        assert_eq!(gemms.len(), 4, "epilogue fusion {epilogue}");
        let one_row = g
            .schedule
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Launch(l) if l.kernel.starts_with("gemv_bf16_k")))
            .count();
        assert_eq!(one_row, 1, "epilogue fusion {epilogue}");
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

/// With memory reuse on, no other buffer shares bytes with an input: a
/// forward launched again without new inputs (benchmark replays, an app's
/// second run) must read the inputs it was given, not what reused them.
#[test]
fn inputs_keep_their_bytes_for_the_whole_forward() {
    let g = generated(mini_block(DType::BF16), true);
    let s = &g.schedule;
    assert!(!s.inputs.is_empty());
    let arena: Vec<_> = s
        .buffers
        .iter()
        .filter(|b| b.region == fluxc_artifact::Region::Arena)
        .collect();
    for input in &s.inputs {
        let i = &s.buffers[input.buffer as usize];
        for b in &arena {
            let overlap = b.offset < i.offset + i.bytes && i.offset < b.offset + b.bytes;
            assert!(
                b.id == i.id || !overlap,
                "input `{}` shares bytes with `{}`",
                input.name,
                b.name
            );
        }
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

fn generated_fp8(graph: Graph, fp8: Fp8Mode) -> Generated {
    generated_with(graph, &fp8_options(fp8))
}

/// Pass options quantizing every linear (not attention) with `fp8`.
fn fp8_options(fp8: Fp8Mode) -> PassOptions {
    PassOptions {
        fuse_qkv_min_rows: 1,
        fp8,
        fp8_policy: Fp8Policy {
            include: vec!["*".into()],
            exclude: Vec::new(),
            min_rows: 0,
            bf16_shapes: vec![],
            attention: false,
            one_row: false,
        },
        ..PassOptions::default()
    }
}

/// Pass options with `fp8` linears (the default policy) and fp8 attention.
fn fp8_attention_options(fp8: Fp8Mode) -> PassOptions {
    PassOptions {
        fuse_qkv_min_rows: 1,
        fp8,
        fp8_policy: Fp8Policy {
            attention: true,
            ..Fp8Policy::default()
        },
        ..PassOptions::default()
    }
}

fn generated_with(graph: Graph, options: &PassOptions) -> Generated {
    let optimized = optimize(graph, options).unwrap();
    let opts = CodegenOptions {
        model_name: "mini".into(),
        layouts: Vec::new(),
        reuse_memory: true,
    };
    generate(&optimized, &opts).unwrap()
}

/// A block with 128-wide heads and fp8 attention: the attention lowers to
/// the V layout launch right before an fp8 attention step over the
/// quantized q and k and the layout kernel's output, with the three scales;
/// the layout kernel reads v where the fused q/k/v projection wrote it (no
/// copy of the slice); the schedule validates, and kernels.cu compiles for
/// sm_90a (where NVRTC is available).
#[test]
fn fp8_attention_lowers_to_the_layout_kernel_and_the_fp8_kernel() {
    let g = generated_with(
        mini_block_with(DType::BF16, 128),
        &fp8_attention_options(Fp8Mode::DynamicRow),
    );
    g.schedule.validate().unwrap();
    let steps = &g.schedule.steps;
    let at: Vec<usize> = (0..steps.len())
        .filter(|&i| matches!(steps[i], Step::Attention(_)))
        .collect();
    let [i] = at[..] else {
        panic!("expected one attention step, found {at:?}")
    };
    let (Step::Launch(layout), Step::Attention(a)) = (&steps[i - 1], &steps[i]) else {
        panic!("the V layout launch should precede the attention")
    };
    let fluxc_artifact::AttentionOperands::Fp8TensorMaps { vt_keys, .. } = a.operands else {
        panic!("{:?}", a.operands)
    };
    assert_eq!(vt_keys, 32, "20 keys padded to 32");
    // The layout kernel reads v's scale and bf16 v, writes the e4m3 copy.
    // v is the last 256 of the fused q/k/v output's 768 columns: rows of
    // 768 values from column 512 on (byte 1024), 20 of them, one batch;
    // the second row source is the first (there is no text stream here).
    let buffer = |t: fluxc_artifact::Tensor| &g.schedule.buffers[t.buffer as usize];
    let dtype = |t: fluxc_artifact::Tensor| buffer(t).dtype;
    assert_eq!(layout.args[0], Arg::Ptr(a.scales.unwrap().v));
    assert_eq!(layout.args[1], Arg::Ptr(a.v));
    assert_eq!(layout.args[2..4], [Arg::I32(20), Arg::I32(2)]);
    let Arg::Ptr(v) = layout.args[4] else {
        panic!("{:?}", layout.args[4])
    };
    assert_eq!(dtype(v), ElemType::Bf16);
    assert_eq!(buffer(v).shape, [1, 20, 768], "{}", buffer(v).name);
    assert_eq!(v.offset, 512 * 2);
    assert_eq!(
        layout.args[5..],
        [
            Arg::I32(20),
            Arg::I32(768),
            Arg::I32(20 * 768),
            Arg::Ptr(v),
            Arg::I32(768),
            Arg::I32(20 * 768)
        ]
    );
    assert_eq!(
        [a.q, a.k, a.v, a.out].map(dtype),
        [
            ElemType::F8e4m3,
            ElemType::F8e4m3,
            ElemType::F8e4m3,
            ElemType::Bf16
        ]
    );
    let scales = a.scales.unwrap();
    assert_eq!(
        [scales.q, scales.k, scales.v].map(dtype),
        [ElemType::F32; 3]
    );
    assert!(!g.kernels_cu.contains("attention_d128_bf16"));
    // v's whole-tensor scale comes from one kernel over the fused q/k/v
    // output's slice, which stores nothing else (the layout kernel right
    // before the attention only reads the scale).
    let writes =
        |l: &fluxc_artifact::Launch, t: fluxc_artifact::Tensor| l.args.contains(&Arg::Ptr(t));
    let producers: Vec<&str> = steps[..i - 1]
        .iter()
        .filter_map(|s| match s {
            Step::Launch(l) if writes(l, scales.v) => Some(l.kernel.as_str()),
            _ => None,
        })
        .collect();
    let [producer] = producers[..] else {
        panic!("v's scale written by {producers:?}")
    };
    assert!(producer.contains("dynamic_scale_slice"), "{producer}");
    let producer_args: Vec<&Arg> = steps[..i]
        .iter()
        .filter_map(|s| match s {
            Step::Launch(l) if l.kernel == producer => Some(&l.args),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        producer_args.contains(&&Arg::Ptr(v)),
        "{producer} does not read the slice in place: {producer_args:?}"
    );
    let bf16_buffers = producer_args
        .iter()
        .filter(|a| matches!(a, Arg::Ptr(t) if dtype(*t) == ElemType::Bf16))
        .count();
    assert_eq!(
        bf16_buffers, 1,
        "{producer} stores a copy of v: {producer_args:?}"
    );
    assert!(
        !g.kernels_cu.contains("_dynamic_scale_f32("),
        "a kernel only computing a tensor scale is left"
    );
    if let Some(why) = common::nvrtc_unavailable() {
        println!("SKIP compiling the fp8 attention block: {why}");
        return;
    }
    let (cubin, log) = common::compile_cubin(&g.kernels_cu, "kernels", &common::include_dir())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!cubin.is_empty(), "{log}");
}

/// Two streams (3 text rows, 17 image rows), each with its own fused q/k/v
/// projection, attending jointly with fp8 attention, as FLUX's double
/// blocks do: the V layout kernel reads the text rows of v from the text
/// projection's output and the image rows from the image one's (columns
/// 512.. of rows of 768), and no kernel writes the concatenated v. When v
/// is also a graph output it is materialized, and the layout reads that
/// copy as one contiguous source.
#[test]
fn fp8_attention_reads_two_streams_values_in_place() {
    let build = |v_is_output: bool| {
        let (h, d, c) = (2, 128, 256);
        let mut b = GraphBuilder::new();
        let mut heads: Vec<Vec<NodeId>> = Vec::new();
        for (stream, rows) in [("txt", 3), ("img", 17)] {
            let x = b.input(stream, DType::BF16, [1, rows, c]).unwrap();
            heads.push(
                ["q", "k", "v"]
                    .iter()
                    .map(|name| {
                        let p = linear(&mut b, x, &format!("{stream}_{name}"), c, DType::BF16);
                        b.reshape(p, [1, rows, h, d]).unwrap()
                    })
                    .collect(),
            );
        }
        let [q, k, v] = [0, 1, 2].map(|i| b.concat(&[heads[0][i], heads[1][i]], 1).unwrap());
        let o = b.attention(q, k, v).unwrap();
        b.output("o", o).unwrap();
        if v_is_output {
            b.output("v", v).unwrap();
        }
        let g = generated_with(
            b.finish().unwrap(),
            &fp8_attention_options(Fp8Mode::DynamicRow),
        );
        g.schedule.validate().unwrap();
        g
    };
    let layout_args = |g: &Generated| -> Vec<Arg> {
        let layouts: Vec<&Launch> = launches(g)
            .into_iter()
            .filter(|l| l.kernel.starts_with("attention_fp8_v"))
            .collect();
        let [layout] = layouts[..] else {
            panic!("{} V layout launches", layouts.len())
        };
        layout.args.clone()
    };
    let g = build(false);
    let buffer = |t: fluxc_artifact::Tensor| &g.schedule.buffers[t.buffer as usize];
    let args = layout_args(&g);
    assert_eq!(args[2..4], [Arg::I32(20), Arg::I32(2)]);
    let (&Arg::Ptr(text), &Arg::Ptr(image)) = (&args[4], &args[8]) else {
        panic!("{args:?}")
    };
    assert_ne!(text.buffer, image.buffer);
    assert_eq!(buffer(text).shape, [1, 3, 768], "{}", buffer(text).name);
    assert_eq!(buffer(image).shape, [1, 17, 768], "{}", buffer(image).name);
    assert_eq!((text.offset, image.offset), (512 * 2, 512 * 2));
    assert_eq!(
        args[5..8],
        [Arg::I32(3), Arg::I32(768), Arg::I32(3 * 768)],
        "the text rows"
    );
    assert_eq!(
        args[9..],
        [Arg::I32(768), Arg::I32(17 * 768)],
        "the image rows"
    );
    let g = build(true);
    let args = layout_args(&g);
    let &Arg::Ptr(v) = &args[4] else {
        panic!("{args:?}")
    };
    assert_eq!(g.schedule.buffers[v.buffer as usize].shape, [1, 20, 2, 128]);
    assert_eq!(
        args[5..8],
        [Arg::I32(20), Arg::I32(256), Arg::I32(20 * 256)]
    );
    assert_eq!(args[8], Arg::Ptr(v));
    // Materializing v is one bf16 [1, 20, 2, 128] buffer more (the others
    // of that shape: q and k before quantization, the output).
    let shaped_like_v = |g: &Generated| {
        g.schedule
            .buffers
            .iter()
            .filter(|b| b.dtype == ElemType::Bf16 && b.shape == [1, 20, 2, 128])
            .count()
    };
    assert_eq!(shaped_like_v(&g), shaped_like_v(&build(false)) + 1);
}

/// A bf16 attention with 64-wide heads next to an fp8 one with 128-wide
/// heads: both kernels (and the V layout kernel) share one kernels.cu,
/// which compiles for sm_90a (where NVRTC is available).
#[test]
fn bf16_and_fp8_attention_kernels_share_a_translation_unit() {
    let mut b = GraphBuilder::new();
    let wide = b.input("wide", DType::BF16, [1, 24, 2, 128]).unwrap();
    let narrow = b.input("narrow", DType::BF16, [1, 24, 4, 64]).unwrap();
    let a = b.attention(wide, wide, wide).unwrap();
    let c = b.attention(narrow, narrow, narrow).unwrap();
    let a = b.reshape(a, [1, 24, 256]).unwrap();
    let c = b.reshape(c, [1, 24, 256]).unwrap();
    let y = b.add(a, c).unwrap();
    b.output("y", y).unwrap();
    let g = generated_with(
        b.finish().unwrap(),
        &fp8_attention_options(Fp8Mode::DynamicTensor),
    );
    let mut kernels: Vec<(&str, bool)> = g
        .schedule
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Attention(a) => Some((a.kernel.as_str(), a.scales.is_some())),
            _ => None,
        })
        .collect();
    kernels.sort();
    assert_eq!(
        kernels,
        [("attention_d64_bf16", false), ("attention_fp8_d128", true)]
    );
    if let Some(why) = common::nvrtc_unavailable() {
        println!("SKIP compiling bf16 and fp8 attention together: {why}");
        return;
    }
    let (cubin, log) = common::compile_cubin(&g.kernels_cu, "kernels", &common::include_dir())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!cubin.is_empty(), "{log}");
}

fn launches(g: &Generated) -> Vec<&Launch> {
    g.schedule
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Launch(l) => Some(l),
            _ => None,
        })
        .collect()
}

#[test]
fn fp8_gemms_carry_their_scales() {
    for (mode, scale_mode) in [
        (Fp8Mode::DynamicRow, ScaleMode::OuterVector),
        (Fp8Mode::DynamicTensor, ScaleMode::Tensor),
    ] {
        let g = generated_fp8(mini_block(DType::BF16), mode);
        g.schedule.validate().unwrap();
        let buffer = |t: fluxc_artifact::Tensor| &g.schedule.buffers[t.buffer as usize];
        let mut gemms = 0;
        for step in &g.schedule.steps {
            let Step::Gemm(gemm) = step else { continue };
            gemms += 1;
            assert_eq!(gemm.dtype, ElemType::F8e4m3, "{}", gemm.name);
            assert_eq!(gemm.d_dtype, Some(ElemType::Bf16));
            assert_eq!(buffer(gemm.a).dtype, ElemType::F8e4m3);
            assert_eq!(buffer(gemm.b).dtype, ElemType::F8e4m3);
            assert_eq!(buffer(gemm.d).dtype, ElemType::Bf16);
            let scales = gemm.scales.expect("fp8 GEMMs have scales");
            assert_eq!(scales.mode, scale_mode);
            // A is the weight: one scale per row of D (output channel);
            // B the input: one per column of D (token).
            let (a_len, b_len) = match scale_mode {
                ScaleMode::OuterVector => (gemm.m, gemm.n),
                ScaleMode::Tensor => (1, 1),
            };
            assert_eq!(buffer(scales.a).elements(), a_len, "{}", gemm.name);
            assert_eq!(buffer(scales.b).elements(), b_len, "{}", gemm.name);
            // The weight's scales, or with a gated residual folded in the
            // gated ones computed each forward.
            let weight_scales = if buffer(scales.a).name.starts_with("gated scales") {
                Region::Arena
            } else {
                Region::Weights
            };
            assert_eq!(buffer(scales.a).region, weight_scales, "{}", gemm.name);
            assert_eq!(buffer(scales.b).region, Region::Arena);
        }
        // fused q/k/v, out, fc1, fc2; the one-row modulation linear runs
        // as fluxc's fp8 GEMV, with its scales' shapes.
        assert_eq!(gemms, 4, "{mode:?}");
        let kernel = match mode {
            Fp8Mode::DynamicRow => "gemv_fp8_k128_rowscale_bias",
            _ => "gemv_fp8_k128_bias",
        };
        assert!(
            launches(&g).iter().any(|l| l.kernel == kernel),
            "{mode:?}: no {kernel}"
        );
    }
}

/// Residual adds go into the GEMM before them (codegen's `gated.rs`):
/// `x + fc2(f)` takes x as cuBLASLt's C, and `x + gate ⊙ out(o)` after an
/// fp8 GEMM with per-row scales is the GEMM too, with C = x and the
/// per-channel scales and the bias the gated ones a `gate_scale` launch
/// writes just before from the weight's scales, the bias and the gate. No
/// pointwise kernel adds. Per-tensor scales cannot carry a per-channel
/// gate: there the gated tail stays a kernel.
#[test]
fn residuals_fold_into_gemms() {
    let g = generated_fp8(mini_block(DType::BF16), Fp8Mode::DynamicRow);
    g.schedule.validate().unwrap();
    let buffer = |t: fluxc_artifact::Tensor| &g.schedule.buffers[t.buffer as usize];
    let (mut gated, mut plain) = (0, 0);
    for (i, step) in g.schedule.steps.iter().enumerate() {
        let Step::Gemm(gemm) = step else { continue };
        let Some(c) = gemm.c else { continue };
        assert_eq!(buffer(c).dtype, ElemType::Bf16);
        assert_eq!(buffer(c).elements(), gemm.m * gemm.n, "{}", gemm.name);
        let scales = gemm.scales.unwrap();
        let bias = gemm.bias.expect("a bias");
        if !buffer(bias).name.starts_with("gated bias") {
            // fc2: its own scales and bias.
            plain += 1;
            assert_eq!(buffer(scales.a).region, Region::Weights);
            continue;
        }
        gated += 1;
        assert!(
            buffer(scales.a).name.starts_with("gated scales"),
            "{}",
            buffer(scales.a).name
        );
        // The launch before writes both.
        let Step::Launch(l) = &g.schedule.steps[i - 1] else {
            panic!("no gate launch before {}", gemm.name)
        };
        assert_eq!(l.kernel, "gate_scale_1x128");
        let written: Vec<u32> = l.args[3..5]
            .iter()
            .map(|a| match a {
                Arg::Ptr(t) => t.buffer,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(written, [scales.a.buffer, bias.buffer]);
        assert_eq!(l.args.len(), 5);
        assert!(g.kernels_cu.contains(&format!("n = {}; break;", gemm.m)));
    }
    // `out` (the attention's) ends in a gated residual, `fc2` in a plain one.
    assert_eq!((gated, plain), (1, 1));
    assert!(
        launches(&g)
            .iter()
            .all(|l| !l.kernel.contains("mul_add") && !l.kernel.ends_with("_add_bf16")),
        "a residual add left as a kernel"
    );
    assert!(g.kernels_cu.contains("gate_scale_1x128("));

    // Per tensor: fc2's plain residual still folds, the gated one does not.
    let tensor = generated_fp8(mini_block(DType::BF16), Fp8Mode::DynamicTensor);
    let with_c = tensor
        .schedule
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Gemm(gemm) if gemm.c.is_some()))
        .count();
    assert_eq!(with_c, 1);
    assert!(launches(&tensor)
        .iter()
        .any(|l| l.kernel.contains("mul_add")));

    // `residual_in_gemm = false` keeps both adds as kernels (the toggle A/B
    // runs measure the fold with).
    let unfolded = generated_with(
        mini_block(DType::BF16),
        &PassOptions {
            residual_in_gemm: false,
            ..fp8_options(Fp8Mode::DynamicRow)
        },
    );
    unfolded.schedule.validate().unwrap();
    assert!(unfolded
        .schedule
        .steps
        .iter()
        .all(|s| !matches!(s, Step::Gemm(gemm) if gemm.c.is_some())));
    let names: Vec<&str> = launches(&unfolded)
        .iter()
        .map(|l| l.kernel.as_str())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("gate_scale")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.contains("mul_add")), "{names:?}");
    assert_eq!(
        launches(&unfolded).len(),
        launches(&g).len() + 1,
        "the gated add's kernel replaces gate_scale, and fc2's add is one more: {names:?}"
    );
}

#[test]
fn fp8_row_scales_fuse_into_their_producers() {
    let bf16 = generated(mini_block(DType::BF16), true);
    let g = generated_fp8(mini_block(DType::BF16), Fp8Mode::DynamicRow);
    let buffer = |t: &Arg| match t {
        Arg::Ptr(t) => &g.schedule.buffers[t.buffer as usize],
        other => panic!("{other:?}"),
    };
    let names: Vec<&str> = launches(&g).iter().map(|l| l.kernel.as_str()).collect();
    // The LayerNorm kernel modulates, scales and quantizes: it writes the
    // fp8 values and one scale per row, and no bf16 activation.
    let ln = launches(&g)
        .into_iter()
        .find(|l| l.kernel.contains("layer_norm"))
        .unwrap();
    let written: Vec<(ElemType, Vec<u64>)> = ln
        .args
        .iter()
        .map(buffer)
        .filter(|b| b.dtype != ElemType::Bf16)
        .map(|b| (b.dtype, b.shape.clone()))
        .collect();
    assert_eq!(
        written,
        [
            (ElemType::F32, vec![1, 20, 1]),
            (ElemType::F8e4m3, vec![1, 20, 128])
        ],
        "{names:?}"
    );
    assert!(ln.kernel.ends_with("_f8e4m3"), "{}", ln.kernel);
    // Every other quantized activation comes from a GEMM or attention
    // (silu → modulation is a pointwise kernel in both): attention output,
    // residual sum and GELU output each take one scale-and-quantize kernel
    // that reads the bf16 value once. Nothing else is added; the bf16
    // build's one-row kernel for the modulation linear is the fp8 one here.
    assert_eq!(launches(&g).len(), launches(&bf16).len() + 3, "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.contains("quantize") && !n.contains("scale")),
        "a kernel only quantizes: {names:?}"
    );
    assert_eq!(g.schedule.scratch_bytes, 0);
}

#[test]
fn fp8_tensor_scales_reduce_across_the_grid() {
    let g = generated_fp8(mini_block(DType::BF16), Fp8Mode::DynamicTensor);
    let scale_launches: Vec<&Launch> = launches(&g)
        .into_iter()
        .filter(|l| l.kernel.contains("dynamic_scale"))
        .collect();
    // One per quantized activation: modulation input, norm output, attention
    // output, residual sum, GELU output.
    assert_eq!(scale_launches.len(), 5);
    let mut scratch = Vec::new();
    for l in &scale_launches {
        // x, the scale, then this launch's own two scratch words.
        let Some(Arg::Ptr(last)) = l.args.last() else {
            panic!("{} has no scratch", l.kernel)
        };
        let b = &g.schedule.buffers[last.buffer as usize];
        assert_eq!((b.region, b.bytes), (Region::Scratch, 8));
        scratch.push(b.offset);
    }
    scratch.dedup();
    assert_eq!(scratch.len(), 5, "every launch has its own scratch");
    assert!(g.schedule.scratch_bytes >= 5 * 8);
}

#[test]
fn fp8_kernels_compile_for_sm90a() {
    if let Some(why) = common::nvrtc_unavailable() {
        println!("SKIP fp8_kernels_compile_for_sm90a: {why}");
        return;
    }
    for mode in [Fp8Mode::DynamicRow, Fp8Mode::DynamicTensor] {
        let g = generated_fp8(mini_block(DType::BF16), mode);
        let (cubin, log) = common::compile_cubin(&g.kernels_cu, "kernels", &common::include_dir())
            .unwrap_or_else(|e| panic!("{e}\n--- kernels.cu ---\n{}", g.kernels_cu));
        assert!(!cubin.is_empty(), "{log}");
    }
}

#[test]
fn fp8_in_an_f32_model_is_a_clear_error() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [1, 24, 64]).unwrap();
    let y = linear(&mut b, x, "fc1", 64, DType::F32);
    b.output("y", y).unwrap();
    let options = PassOptions {
        fp8: Fp8Mode::DynamicRow,
        fp8_policy: Fp8Policy {
            include: vec!["*".into()],
            exclude: Vec::new(),
            min_rows: 0,
            bf16_shapes: vec![],
            attention: false,
            one_row: false,
        },
        ..PassOptions::default()
    };
    let optimized = optimize(b.finish().unwrap(), &options).unwrap();
    let opts = CodegenOptions {
        model_name: "f32".into(),
        layouts: Vec::new(),
        reuse_memory: true,
    };
    let err = generate(&optimized, &opts).unwrap_err().to_string();
    assert!(err.contains("fp8 linears in a f32 model"), "{err}");
    assert!(err.contains("bf16"), "{err}");
}

#[test]
#[ignore]
fn dump_fp8_mini_block() {
    let g = generated_fp8(mini_block(DType::BF16), Fp8Mode::DynamicRow);
    let start = g.kernels_cu.find("k0_").unwrap() - 40;
    println!("{}", &g.kernels_cu[start..]);
    println!("{}", g.fusion_txt);
}

#[test]
fn fast_accumulation_is_recorded_on_fp8_gemms_only() {
    let options = PassOptions {
        fp8_fast_accumulation: true,
        ..fp8_options(Fp8Mode::DynamicRow)
    };
    let g = generated_with(mini_block(DType::BF16), &options);
    let gemms: Vec<&fluxc_artifact::Gemm> = g
        .schedule
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Gemm(gemm) => Some(gemm),
            _ => None,
        })
        .collect();
    // The fused q/k/v, out, fc1, fc2 (the modulation is an fp8 GEMV).
    assert_eq!(gemms.len(), 4);
    assert!(gemms
        .iter()
        .all(|g| g.scales.is_some() && g.fast_accumulation));
    // Without the option (and in bf16 GEMMs) it is never set.
    let plain = generated_fp8(mini_block(DType::BF16), Fp8Mode::DynamicRow);
    let bf16 = generated(mini_block(DType::BF16), true);
    for s in plain.schedule.steps.iter().chain(&bf16.schedule.steps) {
        if let Step::Gemm(g) = s {
            assert!(!g.fast_accumulation, "{}", g.name);
        }
    }
}

#[test]
fn kernel_variants_render_and_compile() {
    use fluxc_codegen::launch::{translation_unit, tunable_kernels, variant};
    let options = PassOptions {
        fuse_qkv_min_rows: 1,
        ..PassOptions::default()
    };
    let optimized = optimize(mini_block(DType::BF16), &options).unwrap();
    let kernels = tunable_kernels(&optimized).unwrap();
    assert!(kernels.len() >= 5, "{}", kernels.len());
    let mut variants = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        // The default configuration renders the default kernel.
        let same = variant(&optimized, k, &k.default_config).unwrap();
        assert_eq!(same.source, k.default.source);
        let mut rendered = 0;
        for (j, config) in k.space.neighbours(&k.default_config).iter().enumerate() {
            match variant(&optimized, k, config) {
                Ok(v) => {
                    assert_eq!(v.block[0] as i64, k.space.values(config)[0]);
                    assert_ne!(v.source, k.default.source);
                    variants.push((format!("v{i}_{j}"), v));
                    rendered += 1;
                }
                Err(e) => assert!(e.to_string().contains("not supported"), "{e}"),
            }
        }
        assert!(rendered > 0, "no other configuration of kernel {i} renders");
    }
    if let Some(why) = common::nvrtc_unavailable() {
        println!("SKIP compiling kernel variants: {why}");
        return;
    }
    let named: Vec<(String, &fluxc_codegen::KernelSource)> =
        variants.iter().map(|(n, v)| (n.clone(), v)).collect();
    let cu = translation_unit(&named);
    let (cubin, log) = common::compile_cubin(&cu, "variants", &common::include_dir())
        .unwrap_or_else(|e| panic!("{e}\n--- variants ---\n{cu}"));
    assert!(!cubin.is_empty(), "{log}");
}

#[test]
fn generate_with_renders_chosen_configurations() {
    use fluxc_codegen::{generate_with, AttentionConfig, Choices, LaunchConfig};
    let options = PassOptions {
        fuse_qkv_min_rows: 1,
        ..PassOptions::default()
    };
    let optimized = optimize(mini_block(DType::BF16), &options).unwrap();
    let opts = CodegenOptions {
        model_name: "mini".into(),
        layouts: Vec::new(),
        reuse_memory: true,
    };
    // Every pointwise kernel in blocks of 128.
    let choose = |k: &fluxc_codegen::KernelSource| {
        (k.config.threads_per_row == 0).then_some(LaunchConfig {
            block_threads: 128,
            threads_per_row: 0,
        })
    };
    // The attention (2 heads of 64 over 20 tokens) in 128-key tiles, 3 stages.
    let tiles = |dims: &[u32; 5]| {
        assert_eq!(*dims, [1, 2, 20, 20, 64]);
        Some(AttentionConfig {
            block_n: 128,
            stages: 3,
        })
    };
    let choices = Choices {
        kernel: &choose,
        attention: &tiles,
    };
    let g = generate_with(&optimized, &opts, &choices).unwrap();
    g.schedule.validate().unwrap();
    let plain = generate(&optimized, &opts).unwrap();
    let blocks = |g: &Generated| -> Vec<u32> { launches(g).iter().map(|l| l.block[0]).collect() };
    assert!(blocks(&g).contains(&128), "{:?}", blocks(&g));
    assert!(!blocks(&plain).contains(&128));
    assert_eq!(launches(&g).len(), launches(&plain).len());
    assert!(g.kernels_cu.contains("__launch_bounds__(128)"));
    let attention = |g: &Generated| {
        g.schedule
            .steps
            .iter()
            .find_map(|s| match s {
                Step::Attention(a) => Some(a.clone()),
                _ => None,
            })
            .unwrap()
    };
    let (tuned, default) = (attention(&g), attention(&plain));
    assert_eq!(tuned.kernel, "attention_d64_n128_s3_bf16");
    assert_eq!(default.kernel, "attention_d64_bf16");
    assert_eq!(
        tuned.operands,
        fluxc_artifact::AttentionOperands::TensorMaps {
            q_rows: 128,
            kv_rows: 128
        }
    );
    assert!(g
        .kernels_cu
        .contains("void __launch_bounds__(384, 1)\nattention_d64_n128_s3_bf16("));
}

/// A miniature VAE decoder stretch, channels-last: a resnet (GroupNorm →
/// SiLU → 3×3 conv, twice, plus the residual), the one-head mid-block
/// attention over the pixels (head width `c`), and an upsampler (nearest ×2
/// → 3×3 conv).
fn mini_vae(dt: DType, c: usize) -> Graph {
    let (h, w) = (6, 5);
    let mut b = GraphBuilder::new();
    let x = b.input("z", dt, [1, h, w, c]).unwrap();
    let mut n = 0;
    let mut norm = |b: &mut GraphBuilder, x: NodeId| {
        n += 1;
        let gw = b.weight(&format!("norm{n}.weight"), dt, [c]).unwrap();
        let gb = b.weight(&format!("norm{n}.bias"), dt, [c]).unwrap();
        b.group_norm(x, gw, gb, 4, 1e-6).unwrap()
    };
    let conv = |b: &mut GraphBuilder, x: NodeId, name: &str| {
        let cw = b
            .weight(&format!("{name}.weight"), dt, [c, c, 3, 3])
            .unwrap();
        let cb = b.weight(&format!("{name}.bias"), dt, [c]).unwrap();
        b.conv2d(x, cw, Some(cb), 1, 1).unwrap()
    };
    let r = norm(&mut b, x);
    let r = b.silu(r).unwrap();
    let r = conv(&mut b, r, "conv1");
    let r = norm(&mut b, r);
    let r = b.silu(r).unwrap();
    let r = conv(&mut b, r, "conv2");
    let x = b.add(x, r).unwrap();
    let a = norm(&mut b, x);
    let a = b.reshape(a, [1, h * w, c]).unwrap();
    let mut heads = Vec::new();
    for name in ["q", "k", "v"] {
        let p = linear(&mut b, a, name, c, dt);
        heads.push(b.reshape(p, [1, h * w, 1, c]).unwrap());
    }
    let o = b.attention(heads[0], heads[1], heads[2]).unwrap();
    let o = b.reshape(o, [1, h * w, c]).unwrap();
    let o = linear(&mut b, o, "out", c, dt);
    let o = b.reshape(o, [1, h, w, c]).unwrap();
    let x = b.add(o, x).unwrap();
    let u = b.upsample_nearest(x, 2).unwrap();
    let y = conv(&mut b, u, "up");
    b.output("sample", y).unwrap();
    b.finish().unwrap()
}

fn gemms(g: &Generated) -> Vec<&fluxc_artifact::Gemm> {
    g.schedule
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Gemm(gemm) => Some(gemm),
            _ => None,
        })
        .collect()
}

#[test]
fn mini_vae_lowers_to_im2col_gemms_group_norms_and_decomposed_attention() {
    // One head wider than the flash kernels take (256), like the VAE's 512.
    let c = 288;
    let g = generated(mini_vae(DType::BF16, c), true);
    g.schedule.validate().unwrap();
    let names: Vec<&str> = launches(&g).iter().map(|l| l.kernel.as_str()).collect();
    // Three convs, each an im2col kernel (the upsampling computed inside
    // the last one) and a GEMM over its patches.
    let im2col: Vec<&&str> = names.iter().filter(|n| n.contains("im2col")).collect();
    assert_eq!(im2col.len(), 3, "{names:?}");
    assert!(names.iter().any(|n| n.contains("upsample_nearest_im2col")));
    assert!(!names.iter().any(|n| n.contains("upsample_nearest_bf16")));
    // Three GroupNorms, each a statistics kernel and a normalizing kernel.
    let stats: Vec<&Launch> = launches(&g)
        .into_iter()
        .filter(|l| l.kernel.contains("group_stats"))
        .collect();
    assert_eq!(stats.len(), 3, "{names:?}");
    for s in &stats {
        let Some(Arg::Ptr(scratch)) = s.args.last() else {
            panic!("no scratch argument")
        };
        assert_eq!(
            g.schedule.buffers[scratch.buffer as usize].region,
            Region::Scratch
        );
    }
    assert_eq!(
        names.iter().filter(|n| n.contains("group_norm")).count(),
        3,
        "{names:?}"
    );
    // The attention (head width 288) is decomposed: q·kᵀ into bf16 scores,
    // the scaled softmax in place, p·v with v read untransposed.
    assert_eq!(
        g.schedule
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Attention(_)))
            .count(),
        0
    );
    let softmax = launches(&g)
        .into_iter()
        .find(|l| l.kernel.contains("attention_softmax"))
        .expect("a softmax kernel");
    assert_eq!(softmax.grid, [30, 1, 1]);
    assert_eq!(softmax.args[0], softmax.args[1], "in place");
    let products: Vec<_> = gemms(&g)
        .into_iter()
        .filter(|gemm| gemm.name.contains("attention"))
        .collect();
    assert_eq!(products.len(), 2);
    let (scores, out) = (products[0], products[1]);
    assert_eq!(
        (scores.trans_a, scores.m, scores.n, scores.k),
        (true, 30, 30, c as u64)
    );
    assert_eq!(
        (out.trans_a, out.m, out.n, out.k),
        (false, c as u64, 30, 30)
    );
    let buffer = |t: fluxc_artifact::Tensor| &g.schedule.buffers[t.buffer as usize];
    assert_eq!(buffer(scores.d).dtype, ElemType::Bf16);
    assert_eq!(buffer(scores.d).region, Region::Arena);
    assert!(buffer(scores.d).name.starts_with("scores of "));
    assert_eq!(scores.d, out.b);
    // 3 conv GEMMs with their bias, q/k/v, the output projection, and the
    // two attention products.
    assert_eq!(gemms(&g).len(), 7);
    for conv in gemms(&g).iter().filter(|gemm| gemm.k == 9 * c as u64) {
        assert_eq!(conv.epilogue, GemmEpilogue::Bias);
    }
    assert_eq!(
        gemms(&g)
            .iter()
            .filter(|gemm| gemm.k == 9 * c as u64)
            .count(),
        3
    );
}

#[test]
fn mini_vae_kernels_compile_for_sm90a() {
    if let Some(why) = common::nvrtc_unavailable() {
        println!("SKIP mini_vae_kernels_compile_for_sm90a: {why}");
        return;
    }
    // bf16 with wide loads, f32, and channels that are no multiple of the
    // vector width (scalar im2col and GroupNorm paths); the head of 288
    // takes decomposed attention, the others the CUDA-core flash kernel.
    for (dt, c) in [
        (DType::BF16, 96),
        (DType::F32, 32),
        (DType::BF16, 36),
        (DType::BF16, 288),
    ] {
        let g = generated(mini_vae(dt, c), true);
        let (cubin, log) = common::compile_cubin(&g.kernels_cu, "kernels", &common::include_dir())
            .unwrap_or_else(|e| panic!("{e}\n--- kernels.cu ---\n{}", g.kernels_cu));
        assert!(!cubin.is_empty(), "{log}");
    }
}

/// The GEMM steps of decomposed attention, run on the host exactly as their
/// column-major fields say (transposes, leading dimensions, byte offsets),
/// with the softmax applied to each score block they write, give the
/// interpreter's attention: batch 2, 3 heads of width 264 (strided head
/// views; wider than the flash kernels take), 5 queries over 7 keys.
#[test]
fn decomposed_attention_steps_compute_attention() {
    use fluxc_ir::interp::{self, Tensor};
    let (b, sq, sk, h, d) = (2, 5, 7, 3, 264);
    let mut g = GraphBuilder::new();
    let q = g.input("q", DType::F32, [b, sq, h, d]).unwrap();
    let k = g.input("k", DType::F32, [b, sk, h, d]).unwrap();
    let v = g.input("v", DType::F32, [b, sk, h, d]).unwrap();
    let o = g.attention(q, k, v).unwrap();
    g.output("o", o).unwrap();
    let graph = g.finish().unwrap();
    let values = |n: usize, seed: u64| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let mut inputs = std::collections::HashMap::new();
    for (name, seq, seed) in [("q", sq, 1), ("k", sk, 2), ("v", sk, 3)] {
        let dims = [b, seq, h, d];
        let data = values(dims.iter().product(), seed);
        inputs.insert(name.to_string(), Tensor::new(dims, data).unwrap());
    }
    let expected = interp::run(&graph, &inputs).unwrap()["o"].clone();

    let generated = generated(graph, true);
    let s = &generated.schedule;
    let mut memory: Vec<Vec<f32>> = s
        .buffers
        .iter()
        .map(|buf| vec![f32::NAN; (buf.bytes / 4) as usize])
        .collect();
    for binding in &s.inputs {
        memory[binding.buffer as usize] = inputs[&binding.name].data.clone();
    }
    let scale = 1.0 / (d as f32).sqrt();
    let mut gemms = 0;
    for step in &s.steps {
        match step {
            Step::Gemm(gemm) => {
                gemms += 1;
                let at = |t: fluxc_artifact::Tensor| (t.buffer as usize, (t.offset / 4) as usize);
                let ((ab, ao), (bb, bo), (db, d_off)) = (at(gemm.a), at(gemm.b), at(gemm.d));
                let (m, n, kk) = (gemm.m as usize, gemm.n as usize, gemm.k as usize);
                let (lda, ldb, ldd) = (gemm.lda as usize, gemm.ldb as usize, gemm.ldd as usize);
                let mut out = vec![0f32; m * n];
                for j in 0..n {
                    for i in 0..m {
                        let mut acc = 0f64;
                        for p in 0..kk {
                            let a = if gemm.trans_a {
                                memory[ab][ao + p + i * lda]
                            } else {
                                memory[ab][ao + i + p * lda]
                            };
                            let bv = if gemm.trans_b {
                                memory[bb][bo + j + p * ldb]
                            } else {
                                memory[bb][bo + p + j * ldb]
                            };
                            acc += f64::from(a) * f64::from(bv);
                        }
                        out[i + j * m] = acc as f32;
                    }
                }
                for j in 0..n {
                    for i in 0..m {
                        memory[db][d_off + i + j * ldd] = out[i + j * m];
                    }
                }
                // A score block (m keys × n queries, column-major: one row of
                // keys per query): what the softmax kernel does to it.
                if gemm.name.contains("scores") {
                    for j in 0..n {
                        let row = &mut memory[db][d_off + j * ldd..d_off + j * ldd + m];
                        let max = row.iter().fold(f32::MIN, |a, &x| a.max(x * scale));
                        let sum: f32 = row.iter().map(|&x| (x * scale - max).exp()).sum();
                        row.iter_mut()
                            .for_each(|x| *x = (*x * scale - max).exp() / sum);
                    }
                }
            }
            Step::Launch(l) => assert!(l.kernel.contains("attention_softmax"), "{}", l.kernel),
            other => panic!("unexpected step {other:?}"),
        }
    }
    assert_eq!(gemms, 2 * b * h);
    let out = &memory[s.outputs[0].buffer as usize];
    let got = Tensor::new(expected.shape.clone(), out.clone()).unwrap();
    let error = got.rel_l2(&expected);
    assert!(error < 1e-6, "{error:e}");
    // Every head's score block starts on a 256-byte boundary.
    for gemm in gemms_of(&generated) {
        assert_eq!(gemm.d.offset % 256, 0, "{}", gemm.name);
    }
}

fn gemms_of(g: &Generated) -> Vec<&fluxc_artifact::Gemm> {
    gemms(g)
        .into_iter()
        .filter(|g| g.name.contains("scores"))
        .collect()
}

/// A concatenation whose parts come from kernels of their own and feed
/// nothing else is written in place: no copy kernel, each part's kernel
/// writes its rows of the concatenation's buffer (text rows at 0, image
/// rows after them), and the GEMM reads that buffer. A part read by
/// something else too keeps the copy, and so does a part that would start
/// off the arena's 256-byte alignment.
#[test]
fn concatenations_of_kernel_outputs_are_written_in_place() {
    let build = |also_read: bool, text: usize| {
        let (image, c) = (5, 64);
        let mut b = GraphBuilder::new();
        let t = b.input("t", DType::BF16, [1, text, c]).unwrap();
        let i = b.input("i", DType::BF16, [1, image, c]).unwrap();
        let nt = b.rms_norm(t, None, 1e-6).unwrap();
        let ni = b.rms_norm(i, None, 1e-6).unwrap();
        let joined = b.concat(&[nt, ni], 1).unwrap();
        let y = linear(&mut b, joined, "proj", 8, DType::BF16);
        b.output("y", y).unwrap();
        if also_read {
            b.output("normed_text", nt).unwrap();
        }
        generated(b.finish().unwrap(), true)
    };
    let g = build(false, 2);
    g.schedule.validate().unwrap();
    let names: Vec<&str> = launches(&g).iter().map(|l| l.kernel.as_str()).collect();
    assert!(!names.iter().any(|n| n.contains("concat")), "{names:?}");
    let written: Vec<fluxc_artifact::Tensor> = launches(&g)
        .iter()
        .filter(|l| l.kernel.contains("rms_norm"))
        .map(|l| match l.args.last() {
            Some(Arg::Ptr(t)) => *t,
            other => panic!("{other:?}"),
        })
        .collect();
    // One buffer, the text part at 0 and the image part 2 rows of 64 bf16
    // further; the GEMM reads the whole of it.
    assert_eq!(written.len(), 2, "{names:?}");
    assert_eq!(written[0].buffer, written[1].buffer);
    let mut offsets: Vec<u64> = written.iter().map(|t| t.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 2 * 64 * 2]);
    let gemm = g
        .schedule
        .steps
        .iter()
        .find_map(|s| match s {
            Step::Gemm(gemm) => Some(gemm),
            _ => None,
        })
        .unwrap();
    assert_eq!((gemm.b.buffer, gemm.b.offset), (written[0].buffer, 0));
    assert_eq!(g.schedule.buffers[gemm.b.buffer as usize].bytes, 7 * 64 * 2);

    for (also_read, text) in [(true, 2), (false, 3)] {
        let g = build(also_read, text);
        g.schedule.validate().unwrap();
        assert!(
            launches(&g).iter().any(|l| l.kernel.contains("concat")),
            "also read {also_read}, {text} text rows"
        );
    }
}
