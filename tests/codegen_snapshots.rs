//! Snapshots of what codegen emits: every kernel and the schedule of the
//! tiny presets (fp8 off, epilogue fusion on and off; bf16 with fp8 per row
//! and per tensor; the tiny VAE decoder), the schedule of one fp8 attention
//! (`ScaledAttention`: quantization, the V layout launch, the fp8 attention
//! step, checked by the runtime's host-side artifact validation too), and a
//! summary of the full FLUX.1-schnell and FLUX VAE schedules. A change here
//! changes what runs on the GPU: review it line by line (`cargo insta
//! review`).

// Shared with tests/gpu.rs, which uses more of it.
#[allow(dead_code)]
#[path = "common/graphs.rs"]
mod graphs;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use fluxc::artifact::{Arg, AttentionOperands, ElemType, Region, Step};
use fluxc::codegen::{generate, schedule_json, write_artifact, CodegenOptions, Generated};
use fluxc::ir::{DType, GraphBuilder};
use fluxc::models::{build_graph, ModelConfig};
use fluxc::passes::pipeline::{optimize, Optimized};
use fluxc::passes::{Fp8Mode, Fp8Policy, PassOptions};

fn generated(preset: &str, epilogue_fusion: bool) -> Generated {
    generated_with(preset, None, |options| PassOptions {
        epilogue_fusion,
        ..options
    })
}

/// `preset` (with its dtype replaced by `dtype`), compiled with its pass
/// options as `adjust` changes them.
fn generated_with(
    preset: &str,
    dtype: Option<&str>,
    adjust: impl FnOnce(PassOptions) -> PassOptions,
) -> Generated {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/{preset}.toml"));
    let mut text = std::fs::read_to_string(&path).unwrap();
    if let Some(dtype) = dtype {
        text = text.replace("dtype = \"f32\"", &format!("dtype = \"{dtype}\""));
    }
    let cfg = ModelConfig::from_toml_str(&text, &path).unwrap();
    let options = adjust(cfg.passes.options());
    let optimized = optimize(build_graph(&cfg).unwrap(), &options).unwrap();
    generate_named(&optimized, cfg.model.name.clone())
}

/// `optimized` generated as model `name`, with no checkpoint layouts and
/// memory reuse on.
fn generate_named(optimized: &Optimized, name: impl Into<String>) -> Generated {
    let opts = CodegenOptions {
        model_name: name.into(),
        layouts: Vec::new(),
        reuse_memory: true,
    };
    generate(optimized, &opts).unwrap()
}

/// The generated kernels (the prelude is a fixed file; left out).
fn kernels(g: &Generated) -> String {
    let start = g
        .kernels_cu
        .find("extern \"C\" __global__ void __launch_bounds__(256) k0_")
        .unwrap_or(0);
    g.kernels_cu[start..].to_string()
}

#[test]
fn tiny_schnell_kernels_and_schedule() {
    for (epilogue, suffix) in [(true, "epilogue_on"), (false, "epilogue_off")] {
        let g = generated("tiny-schnell", epilogue);
        insta::assert_snapshot!(format!("tiny_schnell_kernels_{suffix}"), kernels(&g));
        insta::assert_snapshot!(
            format!("tiny_schnell_schedule_{suffix}"),
            schedule_json(&g.schedule).unwrap()
        );
    }
}

#[test]
fn tiny_schnell_fp8_kernels_and_schedule() {
    for (fp8, suffix) in [
        (Fp8Mode::DynamicRow, "fp8_row"),
        (Fp8Mode::DynamicTensor, "fp8_tensor"),
    ] {
        let g = generated_with("tiny-schnell", Some("bf16"), |options| PassOptions {
            fp8,
            ..options
        });
        insta::assert_snapshot!(format!("tiny_schnell_kernels_bf16_{suffix}"), kernels(&g));
        insta::assert_snapshot!(
            format!("tiny_schnell_schedule_bf16_{suffix}"),
            schedule_json(&g.schedule).unwrap()
        );
    }
}

/// `attention(q, k, v)` over bf16 inputs, q `[1, 200, 2, 128]` and k, v
/// `[1, 333, 2, 128]`, compiled with fp8 per tensor and fp8 attention on.
fn fp8_attention_generated() -> Generated {
    let mut b = GraphBuilder::new();
    let q = b.input("q", DType::BF16, [1, 200, 2, 128]).unwrap();
    let k = b.input("k", DType::BF16, [1, 333, 2, 128]).unwrap();
    let v = b.input("v", DType::BF16, [1, 333, 2, 128]).unwrap();
    b.push_scope("attn");
    let o = b.attention(q, k, v).unwrap();
    b.pop_scope();
    b.output("o", o).unwrap();
    let options = PassOptions {
        fp8: Fp8Mode::DynamicTensor,
        fp8_policy: Fp8Policy {
            attention: true,
            ..Fp8Policy::default()
        },
        ..PassOptions::default()
    };
    let optimized = optimize(b.finish().unwrap(), &options).unwrap();
    generate_named(&optimized, "fp8-attention")
}

#[test]
fn fp8_attention_schedule() {
    let g = fp8_attention_generated();
    let s = &g.schedule;
    s.validate().unwrap();
    // Three scales and two quantizes (q, k; v is quantized by the V layout
    // kernel), the V layout kernel, the fp8 attention.
    let n = s.steps.len();
    assert!(n >= 4, "{n} steps");
    let Step::Launch(layout) = &s.steps[n - 2] else {
        panic!("the V layout kernel should run just before the attention")
    };
    let Step::Attention(a) = &s.steps[n - 1] else {
        panic!("the last step should be the attention")
    };
    let AttentionOperands::Fp8TensorMaps {
        kv_rows,
        vt_rows,
        vt_keys,
        ..
    } = a.operands
    else {
        panic!("{:?}", a.operands)
    };
    // 256-key tiles, each two vt boxes of 128 keys.
    assert_eq!((kv_rows, vt_rows), (256, 128));
    assert_eq!(vt_keys, 336, "333 keys padded to a multiple of 16");
    assert_eq!(
        (a.batch, a.heads, a.seq_q, a.seq_kv, a.head_dim),
        (1, 2, 200, 333, 128)
    );
    // 1/√128, times 28 for q and for k (quantized into ±16).
    assert!((a.scale / (28.0 * 28.0 / 128f32.sqrt()) - 1.0).abs() < 1e-6);
    let buffer = |t: fluxc::artifact::Tensor| &s.buffers[t.buffer as usize];
    // vt: written by the layout kernel (its second argument), read as v.
    assert_eq!(layout.args[1], Arg::Ptr(a.v));
    assert_eq!(buffer(a.v).dtype, ElemType::F8e4m3);
    assert_eq!(buffer(a.v).bytes, 2 * 128 * 336);
    assert_eq!(layout.args[2..4], [Arg::I32(333), Arg::I32(2)]);
    for t in [a.q, a.k] {
        assert_eq!(buffer(t).dtype, ElemType::F8e4m3);
    }
    assert_eq!(buffer(a.out).dtype, ElemType::Bf16);
    let scales = a.scales.expect("an fp8 attention has scales");
    for t in [scales.q, scales.k, scales.v] {
        assert_eq!((buffer(t).dtype, buffer(t).bytes), (ElemType::F32, 4));
    }
    // The layout kernel quantizes v by v's scale (its first argument) and
    // reads v in bf16, contiguous here (a graph input): one row source of
    // 333 rows of 256 values, passed as both.
    assert_eq!(layout.args[0], Arg::Ptr(scales.v));
    let Arg::Ptr(v) = layout.args[4] else {
        panic!("{:?}", layout.args[4])
    };
    assert_eq!(buffer(v).shape, [1, 333, 2, 128]);
    assert_eq!(buffer(v).dtype, ElemType::Bf16);
    let rows = [Arg::I32(256), Arg::I32(333 * 256)];
    assert_eq!(layout.args[5], Arg::I32(333));
    assert_eq!(layout.args[6..8], rows);
    assert_eq!(layout.args[8], Arg::Ptr(v));
    assert_eq!(layout.args[9..], rows);
    assert!(g.kernels_cu.contains(&format!("{}(", layout.kernel)));
    assert!(g.kernels_cu.contains(&format!("{}(", a.kernel)));
    insta::assert_snapshot!(schedule_json(s).unwrap());

    // The runtime's host-side checks accept it (maps, extents, dtypes).
    let dir = tempfile::tempdir().unwrap();
    write_artifact(&dir.path().join("a"), &g).unwrap();
    fluxc::runtime::Artifact::load(&dir.path().join("a")).unwrap();
}

#[test]
fn tiny_vae_kernels_and_schedule() {
    let g = generated("tiny-vae", true);
    insta::assert_snapshot!("tiny_vae_kernels", kernels(&g));
    insta::assert_snapshot!("tiny_vae_schedule", schedule_json(&g.schedule).unwrap());
}

#[test]
fn flux_schnell_schedule_summary() {
    insta::assert_snapshot!(summary(&generated("flux-schnell", true)));
}

#[test]
fn flux_vae_schedule_summary() {
    insta::assert_snapshot!(summary(&generated("flux-vae", true)));
}

/// With `cudnn_convolutions`, every 3×3 convolution of the VAE decoder is a
/// cuDNN step over the image its im2col would have read: no im2col kernel
/// and no patch buffer is left, an upsampling before a convolution is
/// stored for cuDNN to read, and each step's tensors have the shapes its
/// geometry says (the 1×1 convolutions and the attention stay GEMMs).
#[test]
fn vae_convolutions_through_cudnn() {
    for preset in ["tiny-vae", "flux-vae"] {
        let plain = generated_with(preset, Some("bf16"), |o| PassOptions {
            cudnn_convolutions: false,
            ..o
        });
        let g = generated_with(preset, Some("bf16"), |o| PassOptions {
            cudnn_convolutions: true,
            ..o
        });
        g.schedule.validate().unwrap();
        assert!(
            !g.kernels_cu.contains("im2col"),
            "{preset}: an im2col kernel is left"
        );
        assert!(g.kernels_cu.contains("upsample_nearest"), "{preset}");
        let buffer = |t: fluxc::artifact::Tensor| &g.schedule.buffers[t.buffer as usize];
        let mut convs = 0;
        for step in &g.schedule.steps {
            let Step::Conv(c) = step else { continue };
            convs += 1;
            let [n, h, w, ch] = c.input;
            let [k, r, s] = c.filter;
            let [p, q] = c.output;
            assert_eq!((r, s), (3, 3), "{}", c.name);
            let dims = |t| buffer(t).shape.clone();
            assert_eq!(dims(c.x), [n, h, w, ch].map(u64::from), "{}", c.name);
            assert_eq!(dims(c.y), [n, p, q, k].map(u64::from), "{}", c.name);
            assert_eq!(
                buffer(c.w).elements(),
                u64::from(k * r * s * ch),
                "{}",
                c.name
            );
            assert_eq!(buffer(c.w).region, Region::Weights);
            assert_eq!(c.padding, [1, 1]);
            assert_eq!(
                (h + 2 - r + 1, w + 2 - s + 1),
                (p, q),
                "stride 1 keeps the size"
            );
            assert_eq!(buffer(c.bias.unwrap()).elements(), u64::from(k));
        }
        // Every GEMM of the plain build over im2col patches became one.
        let gemms = |g: &Generated| {
            g.schedule
                .steps
                .iter()
                .filter(|s| matches!(s, Step::Gemm(_)))
                .count()
        };
        assert_eq!(gemms(&g) + convs, gemms(&plain), "{preset}");
        assert!(convs >= 10, "{preset}: {convs} convolutions");
        assert!(
            g.schedule.arena_bytes < plain.schedule.arena_bytes,
            "{preset}: no patch matrices, a smaller arena"
        );
    }
}

/// Step counts, kernels, memory and inputs of a schedule.
fn summary(g: &Generated) -> String {
    let s = &g.schedule;
    let mut steps: BTreeMap<&str, usize> = BTreeMap::new();
    for step in &s.steps {
        let kind = match step {
            Step::Launch(_) => "launch",
            Step::Gemm(_) => "gemm",
            Step::Attention(a) if a.scales.is_some() => "fp8 attention",
            Step::Attention(_) => "attention",
            Step::Copy(_) => "copy",
            Step::Conv(_) => "cudnn conv",
        };
        *steps.entry(kind).or_default() += 1;
    }
    let mut text = String::new();
    writeln!(
        text,
        "kernels: {}",
        g.kernels_cu.matches("extern \"C\" __global__").count()
    )
    .unwrap();
    writeln!(text, "steps: {} {steps:?}", s.steps.len()).unwrap();
    writeln!(text, "arena bytes: {}", s.arena_bytes).unwrap();
    writeln!(text, "weight bytes: {}", s.weight_bytes).unwrap();
    let (arena, weights): (Vec<_>, Vec<_>) =
        s.buffers.iter().partition(|b| b.region == Region::Arena);
    writeln!(
        text,
        "buffers: {} in the arena, {} weights",
        arena.len(),
        weights.len()
    )
    .unwrap();
    writeln!(
        text,
        "inputs: {:?}",
        s.inputs.iter().map(|b| &b.name).collect::<Vec<_>>()
    )
    .unwrap();
    text
}

/// A per-row fp8 scale of a computed wide row (`concat(a, GELU(m))` before
/// an fp8 linear, as in FLUX's single blocks, 3072 + 12288 wide): one row
/// kernel that evaluates the row twice, for the absmax and again for the
/// quantized values, with no register array for the row; and a row that is
/// only loaded (the same linear over `m` alone) keeps its registers.
#[test]
fn wide_computed_row_is_read_twice() {
    let generate_for = |with_gelu: bool| {
        let graph = graphs::single_block_projection(37, 3072, 12288, 64, with_gelu);
        let options = PassOptions {
            fp8: Fp8Mode::DynamicRow,
            ..PassOptions::default()
        };
        let optimized = optimize(graph, &options).unwrap();
        kernels(&generate_named(&optimized, "reread"))
    };
    let computed = generate_for(true);
    assert!(!computed.contains("float x["), "{computed}");
    insta::assert_snapshot!("wide_computed_row_kernels", computed);
    let loaded = generate_for(false);
    assert!(loaded.contains("float x[48];"), "{loaded}");
}
