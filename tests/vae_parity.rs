//! The CPU interpreter running fluxc's FLUX VAE decoder gives diffusers'
//! `vae.decode(z).sample`.
//!
//! Fixtures in `tests/fixtures/tiny-vae/` are written by
//! `tests/fixtures/make_vae_fixtures.py` from diffusers 0.42.1's
//! `AutoencoderKL` in fp32 (random weights in diffusers' layout and in the
//! original `ae.safetensors` layout, the latents `z` and the output `sample`,
//! both NCHW). The graph is channels-last, so each test permutes `z` to NHWC
//! and the interpreter's `sample` back to NCHW, builds the graph from
//! `models/tiny-vae.toml`, loads the weights through the real checkpoint
//! loader and compares by relative L2. The optimized graph (convs as im2col
//! GEMMs with load-time-permuted weights, q/k/v fused) is checked the same
//! way, from both layouts.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use fluxc::ir::interp::{self, Tensor};
use fluxc::ir::Graph;
use fluxc::models::checkpoint::{
    detect_format, load_derived_weights, load_weights, read_safetensors, resolve_sources,
    Checkpoint, CheckpointFormat, NameMap,
};
use fluxc::models::vae::build_vae_decoder;
use fluxc::models::ModelConfig;

/// Relative L2 error allowed between two fp32 implementations of the same
/// math (summation order and libm differences only).
const TOLERANCE: f64 = 1e-5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/tiny-vae")
}

/// `t` with its four axes permuted: output axis `i` is input axis `perm[i]`.
fn permute4(t: &Tensor, perm: [usize; 4]) -> Tensor {
    let d = t.shape.dims();
    assert_eq!(d.len(), 4, "a 4-D tensor");
    let out_dims = perm.map(|p| d[p]);
    // Row-major strides of the input.
    let strides = [d[1] * d[2] * d[3], d[2] * d[3], d[3], 1];
    let mut data = Vec::with_capacity(t.data.len());
    for a in 0..out_dims[0] {
        for b in 0..out_dims[1] {
            for c in 0..out_dims[2] {
                for e in 0..out_dims[3] {
                    let index = [a, b, c, e];
                    let offset: usize = (0..4).map(|i| index[i] * strides[perm[i]]).sum();
                    data.push(t.data[offset]);
                }
            }
        }
    }
    Tensor::new(out_dims.to_vec(), data).unwrap()
}

/// `[N, C, H, W]` → `[N, H, W, C]`.
fn nchw_to_nhwc(t: &Tensor) -> Tensor {
    permute4(t, [0, 2, 3, 1])
}

/// `[N, H, W, C]` → `[N, C, H, W]`.
fn nhwc_to_nchw(t: &Tensor) -> Tensor {
    permute4(t, [0, 3, 1, 2])
}

/// Decodes the fixture's `z` (nudged by `dz`) with weights from
/// `checkpoint` (relative to the fixture dir); returns the relative L2
/// error of `sample` vs diffusers.
fn parity(checkpoint: &str, dz: f32) -> f64 {
    let cfg = ModelConfig::load(&root().join("models/tiny-vae.toml")).unwrap();
    let graph = build_vae_decoder(&cfg).unwrap();
    let map = NameMap::of(&cfg).unwrap();
    let inputs = load_weights(&graph, &fixtures().join(checkpoint), map).unwrap();
    decode(&graph, inputs, checkpoint, dz)
}

/// [`parity`] of the optimized graph, its weights derived at load time.
fn optimized_parity(checkpoint: &str) -> f64 {
    let cfg = ModelConfig::load(&root().join("models/tiny-vae.toml")).unwrap();
    let graph = build_vae_decoder(&cfg).unwrap();
    let o = fluxc::passes::pipeline::optimize(graph, &cfg.passes.options()).unwrap();
    let map = NameMap::of(&cfg).unwrap();
    let inputs =
        load_derived_weights(&o.graph, &o.weights, &fixtures().join(checkpoint), map).unwrap();
    decode(&o.graph, inputs, checkpoint, 0.0)
}

/// Runs `graph` on the fixture's latents (nudged by `dz`) with `inputs` as
/// its weights; the relative L2 error of `sample` vs diffusers.
fn decode(graph: &Graph, mut inputs: HashMap<String, Tensor>, checkpoint: &str, dz: f32) -> f64 {
    let mut io = read_safetensors(&fixtures().join("io.safetensors")).unwrap();
    let expected = io.remove("sample").expect("fixture holds the output");
    let mut z = io.remove("z").expect("fixture holds the latents");
    z.data.iter_mut().for_each(|v| *v += dz);
    inputs.insert("z".into(), nchw_to_nhwc(&z));
    let outputs = interp::run(graph, &inputs).unwrap();
    let sample = nhwc_to_nchw(&outputs["sample"]);
    let error = sample.rel_l2(&expected);
    eprintln!("tiny-vae from {checkpoint}: relative L2 error {error:e}");
    error
}

#[test]
fn permutes_move_channels_and_back() {
    // [1, 2, 2, 3] NCHW with value = c·100 + h·10 + w.
    let mut data = Vec::new();
    for c in 0..2 {
        for h in 0..2 {
            for w in 0..3 {
                data.push((c * 100 + h * 10 + w) as f32);
            }
        }
    }
    let nchw = Tensor::new([1, 2, 2, 3], data).unwrap();
    let nhwc = nchw_to_nhwc(&nchw);
    assert_eq!(nhwc.shape.dims(), &[1, 2, 3, 2]);
    // [n=0, h=1, w=2, c=1] is 112, at ((1·3)+2)·2+1 = 11.
    assert_eq!(nhwc.data[11], 112.0);
    assert_eq!(&nhwc.data[..4], &[0.0, 100.0, 1.0, 101.0]);
    assert_eq!(nhwc_to_nchw(&nhwc), nchw);
}

#[test]
fn tiny_vae_from_diffusers_checkpoint() {
    assert!(parity("diffusers", 0.0) <= TOLERANCE);
}

#[test]
fn tiny_vae_from_original_ae_checkpoint() {
    assert!(parity("ae.safetensors", 0.0) <= TOLERANCE);
}

#[test]
fn optimized_tiny_vae_from_both_checkpoints() {
    for checkpoint in ["diffusers", "ae.safetensors"] {
        assert!(optimized_parity(checkpoint) <= TOLERANCE, "{checkpoint}");
    }
}

/// The convolutions in fp8 per row (those whose channels cuBLASLt's fp8
/// GEMMs take: the mid block's and the first three up blocks'): the
/// interpreter's fp8 semantics (each patch row quantized by its own absmax,
/// the weights per output channel) stay near diffusers' fp32 decode, and
/// codegen turns each quantized convolution's im2col, row scale and
/// quantization into one row kernel.
#[test]
fn tiny_vae_with_fp8_convolutions() {
    let cfg = ModelConfig::load(&root().join("models/tiny-vae.toml")).unwrap();
    let options = fluxc::passes::PassOptions {
        fp8: fluxc::passes::Fp8Mode::DynamicRow,
        fp8_policy: fluxc::passes::Fp8Policy {
            include: vec![
                "decoder.mid_block.resnets.*".into(),
                "decoder.up_blocks.0.*".into(),
                "decoder.up_blocks.1.*".into(),
                "decoder.up_blocks.2.*".into(),
            ],
            ..fluxc::passes::Fp8Policy::default()
        },
        ..cfg.passes.options()
    };
    let o = fluxc::passes::pipeline::optimize(build_vae_decoder(&cfg).unwrap(), &options).unwrap();
    let scaled = o
        .graph
        .node_ids()
        .into_iter()
        .filter(|&id| matches!(o.graph.node(id).op, fluxc::ir::Op::ScaledLinear { .. }))
        .count();
    assert_eq!(scaled, 20, "fp8 convolutions");
    let map = NameMap::of(&cfg).unwrap();
    let inputs =
        load_derived_weights(&o.graph, &o.weights, &fixtures().join("diffusers"), map).unwrap();
    let error = decode(&o.graph, inputs, "diffusers (fp8 convolutions)", 0.0);
    // e4m3 keeps 3 mantissa bits: a few percent per GEMM, compounding over
    // the 20 (9.8e-2 when written), not of order 1 as a wrong scale or
    // patch layout gives.
    assert!(error > TOLERANCE && error < 0.15, "{error:e}");

    // Codegen takes fp8 in bf16 models only.
    let text = std::fs::read_to_string(root().join("models/tiny-vae.toml")).unwrap();
    let bf16 = ModelConfig::from_toml_str(
        &text.replace("dtype = \"f32\"", "dtype = \"bf16\""),
        std::path::Path::new("tiny-vae"),
    )
    .unwrap();
    let o = fluxc::passes::pipeline::optimize(build_vae_decoder(&bf16).unwrap(), &options).unwrap();
    let generated = fluxc::codegen::generate(
        &o,
        &fluxc::codegen::CodegenOptions {
            model_name: "tiny-vae-fp8".into(),
            layouts: vec![],
            reuse_memory: true,
        },
    )
    .unwrap();
    let fused = generated
        .kernels_cu
        .matches("_dynamic_scale_im2col_quantize_f8e4m3(")
        .count();
    assert!(fused >= 1, "no fused im2col + quantize kernel");
}

/// The check above is only meaningful if a wrong model misses it: latents
/// nudged by 0.01 must fail the tolerance.
#[test]
fn a_perturbed_input_fails_the_tolerance() {
    assert!(parity("diffusers", 0.01) > 100.0 * TOLERANCE);
}

/// Both fixture layouts are detected as such, load the same weights, and the
/// original name map reads every decoder tensor of `ae.safetensors` (the
/// encoder's it leaves alone).
#[test]
fn the_original_map_reads_every_decoder_tensor() {
    let cfg = ModelConfig::load(&root().join("models/tiny-vae.toml")).unwrap();
    let graph = build_vae_decoder(&cfg).unwrap();
    let map = NameMap::of(&cfg).unwrap();
    let (diffusers, ae) = (
        fixtures().join("diffusers"),
        fixtures().join("ae.safetensors"),
    );
    assert_eq!(
        detect_format(&diffusers).unwrap(),
        CheckpointFormat::Diffusers
    );
    assert_eq!(detect_format(&ae).unwrap(), CheckpointFormat::Bfl);
    assert_eq!(
        load_weights(&graph, &diffusers, map).unwrap(),
        load_weights(&graph, &ae, map).unwrap()
    );
    let sources = resolve_sources(&graph, CheckpointFormat::Bfl, map).unwrap();
    let read: BTreeSet<&str> = sources.values().flat_map(|s| s.tensor_names()).collect();
    let checkpoint = Checkpoint::open(&ae).unwrap();
    let stored: BTreeSet<&str> = checkpoint
        .tensor_names()
        .into_iter()
        .filter(|n| n.starts_with("decoder."))
        .collect();
    assert_eq!(read, stored);
}
