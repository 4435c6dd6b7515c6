//! GPU tests: compiled artifacts run by the runtime on an sm_90 GPU, checked
//! against the CPU interpreter and the diffusers fixtures.
//!
//! Where there is no CUDA driver or GPU every test prints why and passes (CI
//! has none). On the GPU machine they run through one command (README,
//! "Running on a GPU"): the test binary is built here and run there from the
//! repository root.
//!
//! - The tiny presets in f32, compiled without memory reuse so every
//!   intermediate buffer survives the run: the output matches diffusers, and
//!   every buffer (every kernel kind: pointwise, row reductions, tables,
//!   GEMMs with and without epilogues, attention) matches the interpreter's
//!   value of the same node. Both epilogue-fusion settings, both checkpoint
//!   layouts.
//! - The tiny presets in bf16: the output stays within bf16 error of the
//!   interpreter.
//! - The tiny presets in bf16 with fp8 (per row and per tensor): the output
//!   matches the interpreter's fp8 semantics (the same quantized weights and
//!   dynamic scales).
//! - A block with 64- and 128-wide heads in bf16 exercises the tensor-core
//!   attention kernel.
//! - fp8 attention (`ScaledAttention`: per-tensor quantization of bf16 q, k
//!   and v, the V layout kernel, the fp8 attention kernel) on two 128-wide
//!   heads at query/key lengths 300/300, 200/333 and 277/4357 matches the
//!   interpreter's fp8 semantics within 5e-2 relative L2 (printed, with
//!   the distance from the unquantized bf16 attention).
//! - The tiny VAE decoder (convs as im2col + GEMM, split GroupNorms,
//!   decomposed one-head attention, upsampling inside im2col): in f32 from
//!   both checkpoint layouts, its output matches diffusers and every buffer
//!   the interpreter within 3e-5; in bf16 its output stays within 2e-2 of
//!   the interpreter.
//! - The tiny pipeline (tiny-schnell + tiny-vae, 4 steps, one CUDA graph):
//!   from given latents, its final latents and image match a host
//!   reference (the interpreter's transformer 4 times, `scheduler.rs`'s
//!   Euler steps, the interpreter's VAE) within 1e-4 in f32, with and
//!   without the graph; in bf16 within 5e-2 of the f32 reference; the
//!   seeded noise is the documented Philox stream (host mirror), standard
//!   normal, and the same seed gives the same image bits.

#[path = "common/graphs.rs"]
mod graphs;
#[path = "common/repo.rs"]
mod repo;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use fluxc::artifact::{CheckpointLayout, Region, WeightSource};
use fluxc::codegen::{generate, write_artifact, CodegenOptions, Generated};
use fluxc::ir::interp::{self, Tensor};
use fluxc::ir::{DType, Graph, GraphBuilder, NodeId};
use fluxc::models::checkpoint::{
    load_derived_weights, read_safetensors, resolve_derived_sources, BflDims, CheckpointFormat,
    NameMap,
};
use fluxc::models::pipeline::PipelineConfig;
use fluxc::models::scheduler::{pack_latents, unpack_latents, FlowMatchEuler};
use fluxc::models::vae::build_vae_decoder;
use fluxc::models::{build_graph, flux, ModelConfig};
use fluxc::passes::pipeline::{optimize, Optimized};
use fluxc::passes::{Fp8Mode, Fp8Policy, PassOptions};
use fluxc::runtime::pipeline::noise;
use fluxc::runtime::{cuda, AttentionSplitPolicy, Engine, LoadOptions, Pipeline, Start};
use repo::root;

/// Why GPU tests cannot run here, if they cannot.
fn no_gpu() -> Option<String> {
    if let Err(e) = cuda::check_libraries(true) {
        return Some(e.to_string());
    }
    cuda::check_device(0).err().map(|e| e.to_string())
}

macro_rules! require_gpu {
    ($name:literal) => {
        if let Some(why) = no_gpu() {
            println!("SKIP {}: {why}", $name);
            return;
        }
    };
}

/// Whether `generated`'s schedule launches kernel `name`.
fn launches_kernel(generated: &Generated, name: &str) -> bool {
    generated
        .schedule
        .steps
        .iter()
        .any(|s| matches!(s, fluxc::artifact::Step::Launch(l) if l.kernel == name))
}

/// Nodes of `graph` whose op is `kind` (its name in IR dumps).
fn count_ops(graph: &Graph, kind: &str) -> usize {
    fluxc::ir::GraphStats::of(graph).ops(kind)
}

fn config(preset: &str, dtype: Option<&str>) -> ModelConfig {
    let mut text = std::fs::read_to_string(root().join(format!("models/{preset}.toml"))).unwrap();
    if let Some(dtype) = dtype {
        text = text.replace("dtype = \"f32\"", &format!("dtype = \"{dtype}\""));
    }
    ModelConfig::from_toml_str(&text, Path::new(preset)).unwrap()
}

/// Compiles `graph` into `dir` with both checkpoint layouts.
fn compile(
    graph: Graph,
    cfg: &ModelConfig,
    passes: &PassOptions,
    dir: &Path,
) -> (Optimized, Generated) {
    let optimized = optimize(graph, passes).unwrap();
    let map = NameMap::of(cfg).unwrap();
    let bundle = map
        .bundle_prefixes()
        .iter()
        .map(|p| p.to_string())
        .collect();
    let layouts = [
        (CheckpointFormat::Diffusers, "diffusers", vec![]),
        (CheckpointFormat::Bfl, "bfl", bundle),
    ]
    .into_iter()
    .filter_map(|(format, name, strip_prefixes)| {
        let sources =
            resolve_derived_sources(&optimized.graph, &optimized.weights, format, map).ok()?;
        Some((
            CheckpointLayout {
                name: name.into(),
                strip_prefixes,
            },
            sources,
        ))
    })
    .collect();
    let opts = CodegenOptions {
        model_name: cfg.model.name.clone(),
        layouts,
        reuse_memory: false,
    };
    let generated = generate(&optimized, &opts).unwrap();
    write_artifact(dir, &generated).unwrap();
    (optimized, generated)
}

fn engine(artifact: &Path, checkpoint: &Path) -> Engine {
    let options = LoadOptions {
        progress: false,
        ..LoadOptions::default()
    };
    Engine::load(artifact, checkpoint, &options).unwrap_or_else(|e| panic!("{e}"))
}

/// The interpreter's inputs for `optimized`: the (derived) weights read from
/// the checkpoint in `dir` under `cfg`'s names, and the activations `io`.
fn interpreter_inputs(
    optimized: &Optimized,
    cfg: &ModelConfig,
    dir: &Path,
    io: HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>, String> {
    let mut inputs = load_derived_weights(
        &optimized.graph,
        &optimized.weights,
        dir,
        NameMap::of(cfg).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    inputs.extend(io);
    Ok(inputs)
}

/// Every arena buffer of the run next to the interpreter's value of the same
/// node; returns the worst relative L2 error and where.
fn worst_buffer(
    engine: &Engine,
    generated: &Generated,
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
) -> (f64, String) {
    let nodes: Vec<NodeId> = generated.buffer_nodes.iter().flatten().copied().collect();
    let values = interp::run_keeping(graph, inputs, &nodes).unwrap();
    let mut worst = (0.0f64, String::new());
    for (id, buffer) in generated.schedule.buffers.iter().enumerate() {
        // Codegen's temporaries (GroupNorm statistics, attention scores)
        // have no node to compare with.
        let Some(Some(node)) = generated.buffer_nodes.get(id) else {
            continue;
        };
        if buffer.region != Region::Arena {
            continue;
        }
        let expected = &values[node];
        let got = engine.read_buffer(id as u32).unwrap();
        let got = Tensor::new(expected.shape.clone(), got).unwrap();
        let error = got.rel_l2(expected);
        // NaN (a buffer the run never wrote) counts as the worst.
        if error.is_nan() || error > worst.0 {
            worst = (error, buffer.name.clone());
        }
    }
    worst
}

fn fixture_inputs(preset: &str) -> (HashMap<String, Tensor>, Tensor) {
    let mut io = read_safetensors(
        &root()
            .join("tests/fixtures")
            .join(preset)
            .join("io.safetensors"),
    )
    .unwrap();
    let expected = io.remove("sample").unwrap();
    (io.into_iter().collect(), expected)
}

fn set_inputs(engine: &mut Engine, inputs: &HashMap<String, Tensor>) {
    let names: Vec<String> = engine.inputs().iter().map(|b| b.name.clone()).collect();
    for name in names {
        engine.set_input(&name, &inputs[&name].data).unwrap();
    }
}

#[test]
fn tiny_models_match_diffusers_and_the_interpreter() {
    require_gpu!("tiny_models_match_diffusers_and_the_interpreter");
    for preset in ["tiny-schnell", "tiny-dev"] {
        for epilogue_fusion in [true, false] {
            let cfg = config(preset, None);
            let passes = PassOptions {
                epilogue_fusion,
                ..cfg.passes.options()
            };
            let dir = tempfile::tempdir().unwrap();
            let artifact = dir.path().join("artifact");
            let (optimized, generated) = compile(
                flux::build_transformer(&cfg).unwrap(),
                &cfg,
                &passes,
                &artifact,
            );
            let (io, expected) = fixture_inputs(preset);
            let fixtures = root().join("tests/fixtures").join(preset);
            for checkpoint in ["diffusers", "bfl.safetensors"] {
                let mut e = engine(&artifact, &fixtures.join(checkpoint));
                set_inputs(&mut e, &io);
                e.run().unwrap();
                let sample =
                    Tensor::new(expected.shape.clone(), e.output("sample").unwrap()).unwrap();
                let error = sample.rel_l2(&expected);
                let inputs =
                    interpreter_inputs(&optimized, &cfg, &fixtures.join(checkpoint), io.clone())
                        .unwrap();
                let (worst, at) = worst_buffer(&e, &generated, &optimized.graph, &inputs);
                println!(
                    "{preset} epilogue_fusion={epilogue_fusion} {checkpoint}: sample vs diffusers {error:.3e}; worst buffer vs interpreter {worst:.3e} ({at})"
                );
                assert!(error <= 1e-4, "{preset} {checkpoint}: {error:e}");
                assert!(worst <= 1e-4, "{preset} {checkpoint}: {worst:e} at {at}");
                // Replays (as the benchmarks time them: no new inputs) give
                // the same output: nothing overwrote the inputs.
                e.time_replays(1, 2).unwrap();
                assert_eq!(
                    e.output("sample").unwrap(),
                    sample.data,
                    "{preset} {checkpoint}: a replay changed the output"
                );
            }
        }
    }
}

#[test]
fn tiny_models_in_bf16_stay_within_bf16_error() {
    require_gpu!("tiny_models_in_bf16_stay_within_bf16_error");
    for preset in ["tiny-schnell", "tiny-dev"] {
        let cfg = config(preset, Some("bf16"));
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("artifact");
        let (optimized, generated) = compile(
            flux::build_transformer(&cfg).unwrap(),
            &cfg,
            &cfg.passes.options(),
            &artifact,
        );
        let fixtures = root().join("tests/fixtures").join(preset);
        let mut e = engine(&artifact, &fixtures.join("diffusers"));
        let (mut io, _) = fixture_inputs(preset);
        // Timestep and guidance are scaled by 1000 inside the model; in bf16
        // storage (as in diffusers' bf16 forward) 0.7·1000 becomes 700, not
        // the interpreter's 699.2, and the sinusoidal embedding of the two
        // differs by 20%. Values whose products are exact in bf16 keep this
        // comparison about storage rounding, not that quirk.
        io.insert("timestep".into(), Tensor::new([1], vec![0.5]).unwrap());
        if io.contains_key("guidance") {
            io.insert("guidance".into(), Tensor::new([1], vec![4.0]).unwrap());
        }
        set_inputs(&mut e, &io);
        e.run().unwrap();
        let inputs = interpreter_inputs(&optimized, &cfg, &fixtures.join("diffusers"), io).unwrap();
        let reference = interp::run(&optimized.graph, &inputs).unwrap()["sample"].clone();
        let sample = Tensor::new(reference.shape.clone(), e.output("sample").unwrap()).unwrap();
        let error = sample.rel_l2(&reference);
        let (worst, at) = worst_buffer(&e, &generated, &optimized.graph, &inputs);
        println!(
            "{preset} bf16: sample vs interpreter {error:.3e}; worst buffer {worst:.3e} ({at})"
        );
        assert!(error <= 3e-2, "{preset}: {error:e}");
    }
}

/// GPU fp8 vs the interpreter's fp8, relative L2. Not near zero: the GPU
/// stores activations in bf16 between kernels and the interpreter keeps f32,
/// and that difference moves some values across an e4m3 rounding boundary
/// (e4m3 steps are 32× coarser than bf16's), each a 6–12% change of that
/// element, compounding over the ~20 quantized GEMMs of a tiny model.
/// Measured on the H200 (2026-11-29): 4.4e-2 to 5.3e-2. A wrong scale,
/// layout or rounding mode gives errors of order 1.
const FP8_VS_INTERPRETER: f64 = 1e-1;

/// The GPU's fp8 error against the fp32 model (without fp8) may exceed the
/// interpreter's fp8 error (no bf16 storage) by at most this factor.
const FP8_ERROR_RATIO: f64 = 1.5;

#[test]
fn tiny_models_in_fp8_match_the_interpreter() {
    require_gpu!("tiny_models_in_fp8_match_the_interpreter");
    // Every case runs and prints before anything is asserted, so one run on
    // the GPU machine reports all of them. fp8 GEMMs write bf16 or f16
    // (codegen refuses fp8 in f32 models).
    let mut failures = Vec::new();
    for preset in ["tiny-schnell", "tiny-dev"] {
        for fp8 in [Fp8Mode::DynamicRow, Fp8Mode::DynamicTensor] {
            let case = format!("{preset} bf16 {fp8:?}");
            match fp8_case(preset, fp8) {
                Ok(r) => {
                    let ratio = r.gpu_vs_fp32 / r.interpreter_vs_fp32;
                    println!(
                        "{case}: sample vs interpreter {:.3e}; vs fp32: GPU {:.3e}, \
                         interpreter {:.3e} (ratio {ratio:.3}); {}",
                        r.vs_interpreter, r.gpu_vs_fp32, r.interpreter_vs_fp32, r.worst
                    );
                    if r.vs_interpreter.is_nan() || r.vs_interpreter > FP8_VS_INTERPRETER {
                        failures.push(format!("{case}: vs interpreter {:e}", r.vs_interpreter));
                    }
                    if ratio.is_nan() || ratio > FP8_ERROR_RATIO {
                        failures.push(format!("{case}: error ratio {ratio}"));
                    }
                }
                Err(e) => {
                    println!("{case}: FAILED: {e}");
                    failures.push(format!("{case}: {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// What one fp8 tiny-model run measured.
struct Fp8Result {
    /// GPU output vs the interpreter's fp8 output.
    vs_interpreter: f64,
    /// GPU output vs the fp32 model without fp8.
    gpu_vs_fp32: f64,
    /// The interpreter's fp8 output vs the fp32 model without fp8.
    interpreter_vs_fp32: f64,
    /// The worst intermediate buffer, in words.
    worst: String,
}

/// One fp8 tiny model in bf16 on the GPU next to the interpreter's fp8
/// semantics (same quantized weights, same dynamic scales) and the fp32
/// model without fp8.
fn fp8_case(preset: &str, fp8: Fp8Mode) -> Result<Fp8Result, String> {
    let cfg = config(preset, Some("bf16"));
    let passes = PassOptions {
        fp8,
        ..cfg.passes.options()
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let artifact = dir.path().join("artifact");
    let (optimized, generated) = compile(
        flux::build_transformer(&cfg).map_err(|e| e.to_string())?,
        &cfg,
        &passes,
        &artifact,
    );
    let fixtures = root().join("tests/fixtures").join(preset);
    let options = LoadOptions {
        progress: false,
        ..LoadOptions::default()
    };
    let mut e = Engine::load(&artifact, &fixtures.join("diffusers"), &options)
        .map_err(|e| e.to_string())?;
    let (mut io, _) = fixture_inputs(preset);
    // bf16-exact timestep and guidance, as in the bf16 test above.
    io.insert("timestep".into(), Tensor::new([1], vec![0.5]).unwrap());
    if io.contains_key("guidance") {
        io.insert("guidance".into(), Tensor::new([1], vec![4.0]).unwrap());
    }
    set_inputs(&mut e, &io);
    e.run().map_err(|e| e.to_string())?;
    let inputs = interpreter_inputs(&optimized, &cfg, &fixtures.join("diffusers"), io.clone())?;
    let reference = interp::run(&optimized.graph, &inputs).unwrap()["sample"].clone();
    let sample = Tensor::new(
        reference.shape.clone(),
        e.output("sample").map_err(|e| e.to_string())?,
    )
    .unwrap();
    let (worst, at) = worst_buffer(&e, &generated, &optimized.graph, &inputs);
    // The fp32 model without fp8, interpreted (it matches diffusers' fp32
    // forward to ~1e-6, see tests/diffusers_parity.rs).
    let cfg32 = config(preset, None);
    let plain = optimize(
        flux::build_transformer(&cfg32).unwrap(),
        &cfg32.passes.options(),
    )
    .map_err(|e| e.to_string())?;
    let inputs32 = interpreter_inputs(&plain, &cfg32, &fixtures.join("diffusers"), io)?;
    let expected = interp::run(&plain.graph, &inputs32).unwrap()["sample"].clone();
    Ok(Fp8Result {
        vs_interpreter: sample.rel_l2(&reference),
        gpu_vs_fp32: sample.rel_l2(&expected),
        interpreter_vs_fp32: reference.rel_l2(&expected),
        worst: format!("worst buffer {worst:.3e} ({at})"),
    })
}

/// A small attention block with `heads × head_dim`, bf16, random weights
/// saved as a diffusers-style file.
fn attention_block(heads: usize, head_dim: usize, tokens: usize) -> Graph {
    let c = heads * head_dim;
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::BF16, [1, tokens, c]).unwrap();
    let ids = b.input("ids", DType::F32, [tokens, 3]).unwrap();
    let axes = [head_dim / 4, head_dim * 3 / 8, head_dim * 3 / 8];
    let rope = b.rope_table(ids, &axes, 10000.0).unwrap();
    let ln = b.layer_norm(x, None, 1e-6).unwrap();
    let mut heads_out = Vec::new();
    for name in ["to_q", "to_k", "to_v"] {
        let w = b
            .weight(&format!("attn.{name}.weight"), DType::BF16, [c, c])
            .unwrap();
        let bias = b
            .weight(&format!("attn.{name}.bias"), DType::BF16, [c])
            .unwrap();
        let p = b.linear(ln, w, Some(bias)).unwrap();
        let p = b.reshape(p, [1, tokens, heads, head_dim]).unwrap();
        heads_out.push(if name == "to_v" {
            p
        } else {
            let nw = b
                .weight(&format!("attn.norm_{name}.weight"), DType::BF16, [head_dim])
                .unwrap();
            let p = b.rms_norm(p, Some(nw), 1e-6).unwrap();
            b.apply_rope(p, rope).unwrap()
        });
    }
    let o = b
        .attention(heads_out[0], heads_out[1], heads_out[2])
        .unwrap();
    let o = b.reshape(o, [1, tokens, c]).unwrap();
    let out = b.add(x, o).unwrap();
    b.output("out", out).unwrap();
    b.finish().unwrap()
}

/// Deterministic values in [-1, 1).
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The intermediate buffer of a run farthest from the interpreter's value.
struct WorstBuffer {
    /// Its relative L2 error.
    error: f64,
    /// Its name.
    name: String,
}

impl std::fmt::Display for WorstBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worst buffer {:.3e} ({})", self.error, self.name)
    }
}

/// What [`run_random_block`] found.
struct BlockRun {
    /// The relative L2 error of output `out` against the interpreter.
    error: f64,
    /// The generated code (for the caller's checks).
    generated: Generated,
    /// The worst intermediate buffer.
    worst: WorstBuffer,
    /// The GEMMs that asked for fast fp8 accumulation and ran without it.
    standard_accumulation: Vec<String>,
}

/// Compiles `graph` (named `name`) with `options` and runs it on the GPU
/// with deterministic random inputs and weights (weights scaled like a
/// linear's init and saved as f32; `ids` inputs are positions, `norm_`
/// weights near 1), then the interpreter on the same values.
fn run_random_block(graph: Graph, options: &PassOptions, name: &str) -> BlockRun {
    run_random_block_split(graph, options, name, AttentionSplitPolicy::Auto)
}

/// [`run_random_block`], attention split over keys as `split` says.
fn run_random_block_split(
    graph: Graph,
    options: &PassOptions,
    name: &str,
    split: AttentionSplitPolicy,
) -> BlockRun {
    let dir = tempfile::tempdir().unwrap();
    let mut stored: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut inputs: HashMap<String, Tensor> = HashMap::new();
    for (i, id) in graph.inputs().into_iter().enumerate() {
        let node = graph.node(id);
        let fluxc::ir::Op::Input { name, .. } = &node.op else {
            unreachable!()
        };
        let dims = node.ty.shape.dims().to_vec();
        let n = node.ty.shape.numel();
        let scale = if dims.len() == 2 && node.op.is_weight() {
            1.0 / (dims[1] as f32).sqrt()
        } else {
            1.0
        };
        let mut data: Vec<f32> = pseudo_random(n, i as u64 + 1)
            .iter()
            .map(|v| v * scale)
            .collect();
        if name == "ids" {
            data = (0..n).map(|k| ((k / 3) % 17) as f32).collect();
        }
        if name.contains("norm_") {
            data = data.iter().map(|v| 1.0 + 0.2 * v).collect();
        }
        if node.op.is_weight() {
            stored.insert(name.clone(), (dims.clone(), data.clone()));
        }
        inputs.insert(name.clone(), Tensor::new(dims, data).unwrap());
    }
    let ckpt = dir.path().join("weights.safetensors");
    write_f32_safetensors(&ckpt, &stored);
    let optimized = optimize(graph, options).unwrap();
    let identity: BTreeMap<String, WeightSource> = optimized.weights.clone();
    let generated = generate(
        &optimized,
        &CodegenOptions {
            model_name: name.into(),
            layouts: vec![(
                CheckpointLayout {
                    name: "diffusers".into(),
                    strip_prefixes: vec![],
                },
                identity,
            )],
            reuse_memory: false,
        },
    )
    .unwrap();
    let artifact = dir.path().join("artifact");
    write_artifact(&artifact, &generated).unwrap();
    let load = LoadOptions {
        progress: false,
        attention_split: split,
        ..LoadOptions::default()
    };
    let mut e = Engine::load(&artifact, &ckpt, &load).unwrap_or_else(|e| panic!("{e}"));
    for (name, value) in &inputs {
        if !stored.contains_key(name) {
            e.set_input(name, &value.data).unwrap();
        }
    }
    e.run().unwrap();
    let weights = load_derived_weights(
        &optimized.graph,
        &optimized.weights,
        &ckpt,
        BflDims {
            hidden_size: 1,
            mlp_hidden: 1,
        },
    )
    .unwrap();
    let mut all = inputs;
    all.extend(weights);
    let reference = interp::run(&optimized.graph, &all).unwrap()["out"].clone();
    let out = Tensor::new(reference.shape.clone(), e.output("out").unwrap()).unwrap();
    let (worst_error, worst_name) = worst_buffer(&e, &generated, &optimized.graph, &all);
    BlockRun {
        error: out.rel_l2(&reference),
        generated,
        worst: WorstBuffer {
            error: worst_error,
            name: worst_name,
        },
        standard_accumulation: e
            .standard_accumulation_gemms()
            .into_iter()
            .map(String::from)
            .collect(),
    }
}

/// The tensor-core attention kernel (head widths 64 and 128) and, for a head
/// wider than the flash kernels take (320), the decomposed attention (two
/// cuBLASLt GEMMs over strided heads around a generated row softmax, as the
/// VAE's 512-wide head runs), each in a bf16 block against the interpreter.
/// The tensor-core kernel runs with every query tile whole, with every
/// tile split over its keys (all CTAs are one partial wave on the device)
/// and, planned for a few SMs, with whole tiles and split ones together;
/// the intermediate buffers, its output included, stay within bf16 error.
#[test]
fn tensor_core_attention_in_a_bf16_block() {
    require_gpu!("tensor_core_attention_in_a_bf16_block");
    let cases = [
        (2, 64, 300, AttentionSplitPolicy::Off),
        (2, 64, 300, AttentionSplitPolicy::Auto),
        (2, 128, 4352 / 16 + 5, AttentionSplitPolicy::Off),
        // 8 query tiles, 6 key tiles: 6 segments of one key tile each.
        (2, 128, 1000, AttentionSplitPolicy::Auto),
        // 16 CTAs on 12 SMs: 6 tiles whole, 2 as 3 segments of 2 key tiles.
        (2, 128, 1000, AttentionSplitPolicy::ForSms(12)),
        (2, 320, 300, AttentionSplitPolicy::Auto),
    ];
    for (heads, head_dim, tokens, split) in cases {
        let options = PassOptions {
            fuse_qkv_min_rows: 1,
            ..PassOptions::default()
        };
        let BlockRun {
            error,
            generated,
            worst,
            ..
        } = run_random_block_split(
            attention_block(heads, head_dim, tokens),
            &options,
            "attention-block",
            split,
        );
        if head_dim <= 128 {
            assert!(generated
                .kernels_cu
                .contains(&format!("attention_d{head_dim}_bf16")));
        } else {
            assert!(!generated
                .schedule
                .steps
                .iter()
                .any(|s| matches!(s, fluxc::artifact::Step::Attention(_))));
            assert!(generated.kernels_cu.contains("attention_softmax"));
        }
        println!(
            "attention block {heads}x{head_dim}, {tokens} tokens, split {split:?}: out vs \
             interpreter {error:.3e}; {worst}"
        );
        assert!(error <= 2e-2, "{error:e}");
        assert!(worst.error <= 1e-2, "{worst}");
    }
}

/// The one-row linear kernel (`codegen/kernels/gemv.cu`) against the
/// interpreter: rows of 8 elements (one chunk), 3072 (FLUX's modulation),
/// 4104 (more chunks than one batch of loads, the last lanes idle), with
/// and without a bias, output counts that do not fill the last CTA.
#[test]
fn one_row_linears_match_the_interpreter() {
    require_gpu!("one_row_linears_match_the_interpreter");
    for (k, n, with_bias) in [(8, 5, false), (3072, 1003, true), (4104, 37, true)] {
        let graph = graphs::one_row_linear(k, n, with_bias);
        let BlockRun {
            error,
            generated,
            worst,
            ..
        } = run_random_block(graph, &PassOptions::default(), "one-row-linear");
        let kernel = format!("gemv_bf16_k{k}{}", if with_bias { "_bias" } else { "" });
        assert!(
            launches_kernel(&generated, &kernel),
            "{kernel} not launched"
        );
        println!(
            "one-row linear {k} -> {n} (bias {with_bias}): vs interpreter {error:.3e}; {worst}"
        );
        assert!(error <= 1e-2, "{error:e}");
    }
}

/// The one-row fp8 linear kernel (`codegen/kernels/gemv_fp8.cu`) against the
/// interpreter: the fp8 policy's `one_row` switch quantizes a one-row
/// linear of 2²⁴ weights (3072 → 5462, a bias; per row and per tensor),
/// which then runs as `gemv_fp8_k3072…`.
#[test]
fn one_row_fp8_linears_match_the_interpreter() {
    require_gpu!("one_row_fp8_linears_match_the_interpreter");
    let (k, n) = (3072, (1 << 24) / 3072 + 1);
    for (fp8, kernel) in [
        (Fp8Mode::DynamicRow, "gemv_fp8_k3072_rowscale_bias"),
        (Fp8Mode::DynamicTensor, "gemv_fp8_k3072_bias"),
    ] {
        let options = PassOptions {
            fp8,
            ..PassOptions::default()
        };
        let graph = graphs::one_row_linear(k, n, true);
        let BlockRun {
            error,
            generated,
            worst,
            ..
        } = run_random_block(graph, &options, "one-row-fp8");
        assert!(launches_kernel(&generated, kernel), "{kernel} not launched");
        println!("one-row fp8 linear {k} -> {n} ({fp8:?}): vs interpreter {error:.3e}; {worst}");
        // The same quantized operands on both sides: only the order of
        // the f32 sums and the bf16 output differ.
        assert!(error <= 1e-2, "{error:e}");
    }
}

/// A per-row fp8 scale of a computed wide row, as FLUX's single blocks
/// have it (`proj_out(concat(attention, GELU(mlp)))` in fp8 per row): the
/// row kernel evaluates the concat twice (absmax, then the quantized
/// values) instead of holding the row in registers. Rows of 3072 + 12288
/// (FLUX's) and 96 + 8000 (ragged: 1012 chunks of 8 over 256 threads),
/// against the interpreter.
#[test]
fn a_wide_computed_row_quantized_per_row_matches_the_interpreter() {
    require_gpu!("a_wide_computed_row_quantized_per_row_matches_the_interpreter");
    for (rows, left, right, n) in [(37, 3072, 12288, 64), (5, 96, 8000, 24)] {
        let graph = graphs::single_block_projection(rows, left, right, n, true);
        let options = PassOptions {
            fp8: Fp8Mode::DynamicRow,
            ..PassOptions::default()
        };
        let BlockRun {
            error,
            generated,
            worst,
            ..
        } = run_random_block(graph, &options, "reread");
        let kernels = &generated.kernels_cu;
        let at = kernels
            .find("gelu_tanh_concat")
            .expect("one row kernel for the gelu, concat, scale and quantize");
        let body = &kernels[at..kernels[at..]
            .find("\n}\n")
            .map_or(kernels.len(), |e| at + e)];
        assert!(
            !body.contains("float x[") && body.contains("scale_amax = fmaxf(scale_amax"),
            "the row is held in registers:\n{body}"
        );
        println!("per-row fp8 of concat(a, gelu(m)), {rows} rows of {left} + {right}: vs interpreter {error:.3e}; {worst}");
        assert!(error <= FP8_VS_INTERPRETER, "{error:e}");
    }
}

/// Fast fp8 accumulation where cuBLASLt has none: FLUX's text-stream MLP
/// down projection at 256 text tokens (3072 × 256 × 12288, per-row scales,
/// a bias and the residual read as C) found no fast-accumulation algorithm
/// on the H200 and failed to load
/// (`benches/results/2026-11-29_ce1bee7_fp8_row_fast_t256_load_failure.log`).
/// The engine now accumulates as usual there; the block loads, runs and
/// matches the interpreter.
#[test]
fn fp8_fast_accumulation_falls_back_where_cublaslt_has_none() {
    require_gpu!("fp8_fast_accumulation_falls_back_where_cublaslt_has_none");
    let (rows, k, n) = (256, 12288, 3072);
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::BF16, [rows, k]).unwrap();
    let residual = b.input("residual", DType::BF16, [rows, n]).unwrap();
    b.push_scope("transformer_blocks.0");
    let w = b
        .weight("ff_context.net.2.weight", DType::BF16, [n, k])
        .unwrap();
    let bias = b.weight("ff_context.net.2.bias", DType::BF16, [n]).unwrap();
    let y = b.linear(x, w, Some(bias)).unwrap();
    b.pop_scope();
    let out = b.add(residual, y).unwrap();
    b.output("out", out).unwrap();
    let options = PassOptions {
        fp8: Fp8Mode::DynamicRow,
        fp8_fast_accumulation: true,
        ..PassOptions::default()
    };
    let run = run_random_block(b.finish().unwrap(), &options, "fast-accumulation");
    let fast: Vec<&str> = run
        .generated
        .schedule
        .steps
        .iter()
        .filter_map(|s| match s {
            fluxc::artifact::Step::Gemm(g) if g.fast_accumulation && g.c.is_some() => {
                Some(g.name.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(fast.len(), 1, "one fp8 GEMM with fast accumulation and C");
    println!(
        "fast-accumulation fp8 GEMM {rows} x {k} -> {n}: vs interpreter {:.3e}; {}; run with \
         standard accumulation: {:?}",
        run.error, run.worst, run.standard_accumulation
    );
    assert!(
        run.standard_accumulation.is_empty() || run.standard_accumulation == fast,
        "{:?}",
        run.standard_accumulation
    );
    assert!(run.error <= FP8_VS_INTERPRETER, "{:e}", run.error);
}

/// Relative L2 allowed between the fp8 attention kernel and the
/// interpreter's `ScaledAttention`, which rounds what the kernel rounds
/// (e4m3 probabilities, a bf16 output) but not where: the kernel's online
/// softmax rounds `256·P` relative to the running max of the key tiles seen
/// so far, then rescales in f32, while the interpreter rounds relative to
/// the row's final max, so tiles before a row's max key round on another
/// grid (e4m3-sized noise, ~2.5% per probability, averaged over keys); the
/// order of the f32 sums and the exp2-based softmax differ too.
const FP8_ATTENTION_TOL: f64 = 5e-2;

/// `attention(q, k, v)` over bf16 inputs q `[1, sq, 2, 128]`, k and v
/// `[1, sk, 2, 128]`, with fp8 attention on: the compiled artifact runs
/// q, k, v's per-tensor scales and quantizes, the V layout kernel and the
/// fp8 attention kernel; its output is compared with the interpreter's.
/// The kernel runs with every query tile whole, every tile split over its
/// keys (on the device, all these CTAs are one partial wave) and, planned
/// for 4 SMs, whole and split tiles together.
#[test]
fn fp8_attention_matches_the_interpreter() {
    require_gpu!("fp8_attention_matches_the_interpreter");
    use AttentionSplitPolicy::{Auto, ForSms, Off};
    for (sq, sk, splits) in [
        (300, 300, &[Off, Auto][..]),
        (200, 333, &[Auto][..]),
        // 18 key tiles: 18 segments of one, or 2 of 9 for a third of the tiles.
        (277, 4357, &[Off, Auto, ForSms(4)][..]),
    ] {
        let (heads, d) = (2, 128);
        let mut b = GraphBuilder::new();
        let q = b.input("q", DType::BF16, [1, sq, heads, d]).unwrap();
        let k = b.input("k", DType::BF16, [1, sk, heads, d]).unwrap();
        let v = b.input("v", DType::BF16, [1, sk, heads, d]).unwrap();
        let o = b.attention(q, k, v).unwrap();
        b.output("o", o).unwrap();
        let graph = b.finish().unwrap();
        let plain = graph.clone();
        let optimized = optimize(
            graph,
            &PassOptions {
                fp8: Fp8Mode::DynamicTensor,
                fp8_policy: Fp8Policy {
                    attention: true,
                    ..Fp8Policy::default()
                },
                ..PassOptions::default()
            },
        )
        .unwrap();
        let scaled = count_ops(&optimized.graph, "scaled_attention");
        assert_eq!(scaled, 1, "sq {sq} sk {sk}");
        let dir = tempfile::tempdir().unwrap();
        // No weights: any checkpoint file serves the one (empty) layout.
        let ckpt = dir.path().join("weights.safetensors");
        let unused = BTreeMap::from([("unused".to_string(), (vec![1], vec![0.0]))]);
        write_f32_safetensors(&ckpt, &unused);
        let generated = generate(
            &optimized,
            &CodegenOptions {
                model_name: "fp8-attention".into(),
                layouts: vec![(
                    CheckpointLayout {
                        name: "diffusers".into(),
                        strip_prefixes: vec![],
                    },
                    BTreeMap::new(),
                )],
                reuse_memory: false,
            },
        )
        .unwrap();
        let artifact = dir.path().join("artifact");
        write_artifact(&artifact, &generated).unwrap();
        // q sharper than k and v, so rows have a few dominant keys as well
        // as a flat tail.
        let mut inputs: HashMap<String, Tensor> = HashMap::new();
        for (i, (name, seq, gain)) in [("q", sq, 3.0), ("k", sk, 1.0), ("v", sk, 1.0)]
            .into_iter()
            .enumerate()
        {
            let data = pseudo_random(seq * heads * d, 100 + i as u64)
                .iter()
                .map(|x| x * gain)
                .collect();
            inputs.insert(
                name.to_string(),
                Tensor::new([1, seq, heads, d], data).unwrap(),
            );
        }
        let reference = interp::run(&optimized.graph, &inputs).unwrap()["o"].clone();
        let bf16 = interp::run(&plain, &inputs).unwrap()["o"].clone();
        for &split in splits {
            let load = LoadOptions {
                progress: false,
                attention_split: split,
                ..LoadOptions::default()
            };
            let mut e = Engine::load(&artifact, &ckpt, &load).unwrap_or_else(|e| panic!("{e}"));
            set_inputs(&mut e, &inputs);
            e.run().unwrap();
            let out = Tensor::new(reference.shape.clone(), e.output("o").unwrap()).unwrap();
            let error = out.rel_l2(&reference);
            let (worst, at) = worst_buffer(&e, &generated, &optimized.graph, &inputs);
            println!(
                "fp8 attention 2x128, {sq} queries x {sk} keys, split {split:?}: vs interpreter \
                 {error:.3e} (the interpreter's fp8 vs bf16 attention {:.3e}, GPU vs bf16 \
                 {:.3e}); worst buffer {worst:.3e} ({at})",
                reference.rel_l2(&bf16),
                out.rel_l2(&bf16)
            );
            assert!(
                error <= FP8_ATTENTION_TOL,
                "sq {sq} sk {sk} {split:?}: {error:e}"
            );
        }
    }
}

/// Writes f32 tensors as a safetensors file.
fn write_f32_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, data))| {
            (
                name.clone(),
                shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// `t` (rank 4) with its axes permuted: output axis `i` is input axis `perm[i]`.
fn permute4(t: &Tensor, perm: [usize; 4]) -> Tensor {
    let d = t.shape.dims();
    let out: Vec<usize> = perm.iter().map(|&p| d[p]).collect();
    let mut strides = [0usize; 4];
    let mut acc = 1;
    for a in (0..4).rev() {
        strides[a] = acc;
        acc *= d[a];
    }
    let mut data = Vec::with_capacity(t.data.len());
    for i0 in 0..out[0] {
        for i1 in 0..out[1] {
            for i2 in 0..out[2] {
                for i3 in 0..out[3] {
                    let at: usize = [i0, i1, i2, i3]
                        .iter()
                        .zip(perm)
                        .map(|(&i, p)| i * strides[p])
                        .sum();
                    data.push(t.data[at]);
                }
            }
        }
    }
    Tensor::new(out, data).unwrap()
}

/// The tiny VAE fixture: its latents `z` as the graph takes them (NHWC) and
/// diffusers' `sample` (NCHW).
fn vae_fixture() -> (HashMap<String, Tensor>, Tensor) {
    let (mut io, expected) = fixture_inputs("tiny-vae");
    let z = permute4(&io["z"], [0, 2, 3, 1]);
    io.insert("z".into(), z);
    (io, expected)
}

/// Relative L2 error allowed between an f32 GPU buffer and the
/// interpreter's value of it (the bound for the VAE).
const VAE_F32_BUFFER: f64 = 3e-5;

#[test]
fn tiny_vae_matches_diffusers_and_the_interpreter() {
    require_gpu!("tiny_vae_matches_diffusers_and_the_interpreter");
    let cfg = config("tiny-vae", None);
    let fixtures = root().join("tests/fixtures/tiny-vae");
    let (io, expected) = vae_fixture();
    let mut failures = Vec::new();
    for epilogue_fusion in [true, false] {
        let passes = PassOptions {
            epilogue_fusion,
            ..cfg.passes.options()
        };
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("artifact");
        let (optimized, generated) =
            compile(build_vae_decoder(&cfg).unwrap(), &cfg, &passes, &artifact);
        for checkpoint in ["diffusers", "ae.safetensors"] {
            let mut e = engine(&artifact, &fixtures.join(checkpoint));
            set_inputs(&mut e, &io);
            e.run().unwrap();
            let shape = [1, 32, 32, 3];
            let sample = Tensor::new(shape, e.output("sample").unwrap()).unwrap();
            let error = permute4(&sample, [0, 3, 1, 2]).rel_l2(&expected);
            let inputs =
                interpreter_inputs(&optimized, &cfg, &fixtures.join(checkpoint), io.clone())
                    .unwrap();
            let (worst, at) = worst_buffer(&e, &generated, &optimized.graph, &inputs);
            let case = format!("tiny-vae epilogue_fusion={epilogue_fusion} {checkpoint}");
            println!(
                "{case}: sample vs diffusers {error:.3e}; worst buffer vs interpreter {worst:.3e} ({at})"
            );
            if error.is_nan() || error > 1e-4 {
                failures.push(format!("{case}: sample {error:e}"));
            }
            if worst.is_nan() || worst > VAE_F32_BUFFER {
                failures.push(format!("{case}: {worst:e} at {at}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The tiny VAE as `cfg` and `passes` compile it, run on the GPU with the
/// fixture's diffusers weights on `io`, next to the interpreter's value of
/// the same optimized graph.
struct TinyVaeRun {
    optimized: Optimized,
    /// The GPU's `sample` (NHWC).
    sample: Tensor,
    /// The interpreter's.
    reference: Tensor,
    /// The buffer furthest from the interpreter: its error and what it holds.
    worst: (f64, String),
}

fn tiny_vae_on_gpu(
    cfg: &ModelConfig,
    passes: &PassOptions,
    io: &HashMap<String, Tensor>,
) -> TinyVaeRun {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("artifact");
    let (optimized, generated) = compile(build_vae_decoder(cfg).unwrap(), cfg, passes, &artifact);
    let weights = root().join("tests/fixtures/tiny-vae/diffusers");
    let mut e = engine(&artifact, &weights);
    set_inputs(&mut e, io);
    e.run().unwrap();
    let inputs = interpreter_inputs(&optimized, cfg, &weights, io.clone()).unwrap();
    let reference = interp::run(&optimized.graph, &inputs).unwrap()["sample"].clone();
    let sample = Tensor::new(reference.shape.clone(), e.output("sample").unwrap()).unwrap();
    let worst = worst_buffer(&e, &generated, &optimized.graph, &inputs);
    TinyVaeRun {
        optimized,
        sample,
        reference,
        worst,
    }
}

#[test]
fn tiny_vae_in_bf16_stays_within_bf16_error() {
    require_gpu!("tiny_vae_in_bf16_stays_within_bf16_error");
    let cfg = config("tiny-vae", Some("bf16"));
    let (io, _) = vae_fixture();
    let run = tiny_vae_on_gpu(&cfg, &cfg.passes.options(), &io);
    let error = run.sample.rel_l2(&run.reference);
    let (worst, at) = run.worst;
    println!("tiny-vae bf16: sample vs interpreter {error:.3e}; worst buffer {worst:.3e} ({at})");
    assert!(error <= 2e-2, "tiny-vae bf16: {error:e}");
}

/// GPU fp8 vs the interpreter's fp8 for the tiny VAE, relative L2: wider
/// than [`FP8_VS_INTERPRETER`] because its 20 fp8 convolutions run back to
/// back through residual blocks and GroupNorms, so the bf16-storage
/// differences compound further; both are ~1e-1 from the fp32 decoder.
/// Measured on the H200 (2026-11-29, `9be2661`): 1.002e-1 (GPU 9.24e-2 and
/// interpreter 1.03e-1 from fp32). A wrong scale or patch layout gives
/// errors of order 1; the error-ratio check guards the accuracy.
const FP8_VAE_VS_INTERPRETER: f64 = 2e-1;

/// The tiny VAE in bf16 with its convolutions in fp8 per row (the
/// convolutions whose channel counts cuBLASLt's fp8 GEMMs take, multiples
/// of 16: the mid block's and the first three up blocks'), on the GPU next
/// to the interpreter's fp8 semantics: the fused im2col + per-row absmax +
/// quantize kernels and the fp8 GEMMs over the patches. Also reported: both
/// against the fp32 decoder without fp8.
#[test]
fn tiny_vae_in_fp8_matches_the_interpreter() {
    require_gpu!("tiny_vae_in_fp8_matches_the_interpreter");
    let cfg = config("tiny-vae", Some("bf16"));
    let passes = PassOptions {
        fp8: Fp8Mode::DynamicRow,
        fp8_policy: Fp8Policy {
            include: vec![
                "decoder.mid_block.resnets.*".into(),
                "decoder.up_blocks.0.*".into(),
                "decoder.up_blocks.1.*".into(),
                "decoder.up_blocks.2.*".into(),
            ],
            ..Fp8Policy::default()
        },
        ..cfg.passes.options()
    };
    let (io, _) = vae_fixture();
    let TinyVaeRun {
        optimized,
        sample,
        reference,
        worst: (worst, at),
    } = tiny_vae_on_gpu(&cfg, &passes, &io);
    let quantized = count_ops(&optimized.graph, "scaled_linear");
    assert!(quantized >= 10, "only {quantized} fp8 convolutions");
    let cfg32 = config("tiny-vae", None);
    let plain = optimize(build_vae_decoder(&cfg32).unwrap(), &cfg32.passes.options()).unwrap();
    let weights = root().join("tests/fixtures/tiny-vae/diffusers");
    let inputs32 = interpreter_inputs(&plain, &cfg32, &weights, io).unwrap();
    let expected = interp::run(&plain.graph, &inputs32).unwrap()["sample"].clone();
    let vs_interpreter = sample.rel_l2(&reference);
    let (gpu_vs_fp32, interpreter_vs_fp32) =
        (sample.rel_l2(&expected), reference.rel_l2(&expected));
    let ratio = gpu_vs_fp32 / interpreter_vs_fp32;
    println!(
        "tiny-vae bf16 fp8 row ({quantized} convolutions): sample vs interpreter \
         {vs_interpreter:.3e}; vs fp32: GPU {gpu_vs_fp32:.3e}, interpreter \
         {interpreter_vs_fp32:.3e} (ratio {ratio:.3}); worst buffer {worst:.3e} ({at})"
    );
    assert!(
        vs_interpreter <= FP8_VAE_VS_INTERPRETER,
        "tiny-vae fp8: vs interpreter {vs_interpreter:e}"
    );
    assert!(
        ratio <= FP8_ERROR_RATIO,
        "tiny-vae fp8: error ratio {ratio}"
    );
}

/// The tiny VAE with its 3×3 convolutions through cuDNN (`[passes]
/// cudnn_convolutions`): in f32 against diffusers (cuDNN's f32 FMA math, the
/// bound of the im2col build) and every buffer against the interpreter; in
/// bf16 against the interpreter within bf16 error.
#[test]
fn tiny_vae_with_cudnn_convolutions() {
    require_gpu!("tiny_vae_with_cudnn_convolutions");
    let fixtures = root().join("tests/fixtures/tiny-vae");
    let (io, expected) = vae_fixture();
    let mut failures = Vec::new();
    for dtype in [None, Some("bf16")] {
        let cfg = config("tiny-vae", dtype);
        let passes = PassOptions {
            cudnn_convolutions: true,
            ..cfg.passes.options()
        };
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("artifact");
        let (optimized, generated) =
            compile(build_vae_decoder(&cfg).unwrap(), &cfg, &passes, &artifact);
        let convs = generated
            .schedule
            .steps
            .iter()
            .filter(|s| matches!(s, fluxc::artifact::Step::Conv(_)))
            .count();
        assert!(convs > 0, "no cuDNN convolution in the schedule");
        let options = LoadOptions {
            progress: false,
            ..LoadOptions::default()
        };
        let mut e = match Engine::load(&artifact, &fixtures.join("diffusers"), &options) {
            Ok(e) => e,
            Err(err) => {
                failures.push(format!("{dtype:?}: {err}"));
                continue;
            }
        };
        set_inputs(&mut e, &io);
        e.run().unwrap();
        let inputs =
            interpreter_inputs(&optimized, &cfg, &fixtures.join("diffusers"), io.clone()).unwrap();
        let reference = interp::run(&optimized.graph, &inputs).unwrap()["sample"].clone();
        let sample = Tensor::new(reference.shape.clone(), e.output("sample").unwrap()).unwrap();
        let vs_interpreter = sample.rel_l2(&reference);
        let vs_diffusers = permute4(&sample, [0, 3, 1, 2]).rel_l2(&expected);
        let (worst, at) = worst_buffer(&e, &generated, &optimized.graph, &inputs);
        let case = format!(
            "tiny-vae {} cuDNN ({convs} convolutions)",
            dtype.unwrap_or("f32")
        );
        println!(
            "{case}: sample vs interpreter {vs_interpreter:.3e}, vs diffusers {vs_diffusers:.3e}; \
             worst buffer {worst:.3e} ({at})"
        );
        let (bound, worst_bound) = match dtype {
            None => (1e-4, VAE_F32_BUFFER),
            Some(_) => (2e-2, 3e-2),
        };
        if vs_interpreter.is_nan() || vs_interpreter > bound {
            failures.push(format!("{case}: vs interpreter {vs_interpreter:e}"));
        }
        if dtype.is_none() && (vs_diffusers.is_nan() || vs_diffusers > bound) {
            failures.push(format!("{case}: vs diffusers {vs_diffusers:e}"));
        }
        if worst.is_nan() || worst > worst_bound {
            failures.push(format!("{case}: {worst:e} at {at}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// --- the denoising pipeline ---------------------------------------------------

/// The tiny pipeline (`tiny-schnell-pipeline.toml`: tiny-schnell + tiny-vae
/// at 64×48, 4 steps) with its sub-models in `dtype` (`None`: f32):
/// compiled with memory reuse (so the engines' input bytes are reused, as
/// in production) into `dir` as `fluxc compile` does, the VAE's
/// convolutions through cuDNN with `cudnn_convolutions`, the conditioning
/// hoisted out of the loop with `hoist_conditioning`; returns the f32
/// configuration and spec.
fn compile_tiny_pipeline(
    dir: &Path,
    dtype: Option<&str>,
    cudnn_convolutions: bool,
    hoist_conditioning: bool,
) -> PipelineConfig {
    let presets = root().join("models");
    let work = tempfile::tempdir().unwrap();
    for preset in ["tiny-schnell", "tiny-vae", "tiny-schnell-pipeline"] {
        let mut text = std::fs::read_to_string(presets.join(format!("{preset}.toml"))).unwrap();
        if let Some(dtype) = dtype {
            text = text.replace("dtype = \"f32\"", &format!("dtype = \"{dtype}\""));
        }
        std::fs::write(work.path().join(format!("{preset}.toml")), text).unwrap();
    }
    let mut cfg = PipelineConfig::load(&work.path().join("tiny-schnell-pipeline.toml")).unwrap();
    cfg.hoist_conditioning = hoist_conditioning;
    let parts = cfg.artifacts();
    for (sub, model) in &parts {
        let graph = build_graph(model).unwrap();
        let passes = PassOptions {
            cudnn_convolutions: cudnn_convolutions && *sub == "vae",
            ..model.passes.options()
        };
        let optimized = optimize(graph, &passes).unwrap();
        let layouts = [(CheckpointFormat::Diffusers, "diffusers")]
            .into_iter()
            .map(|(format, name)| {
                let sources = resolve_derived_sources(
                    &optimized.graph,
                    &optimized.weights,
                    format,
                    NameMap::of(model).unwrap(),
                )
                .unwrap();
                (
                    CheckpointLayout {
                        name: name.into(),
                        strip_prefixes: vec![],
                    },
                    sources,
                )
            })
            .collect();
        let opts = CodegenOptions {
            model_name: model.model.name.clone(),
            layouts,
            reuse_memory: true,
        };
        write_artifact(&dir.join(sub), &generate(&optimized, &opts).unwrap()).unwrap();
    }
    let spec = cfg.spec().unwrap();
    std::fs::write(
        dir.join("pipeline.json"),
        serde_json::to_string_pretty(&spec).unwrap(),
    )
    .unwrap();
    cfg
}

/// What the host reference computes: the final packed latents and the
/// channels-last image.
struct HostRun {
    latents: Vec<f32>,
    image: Vec<f32>,
}

/// The whole pipeline on the host in f32: the interpreter's transformer N
/// times with the spec's timesteps, the Euler step of `scheduler.rs`, the
/// unpacking and latent scaling, and the interpreter's VAE decoder.
fn host_pipeline(cfg: &PipelineConfig, embeds: &[f32], pooled: &[f32], start: &[f32]) -> HostRun {
    let spec = cfg.spec().unwrap();
    let fixtures = root().join("tests/fixtures");
    let weights = |model: &ModelConfig, graph: Graph, ckpt: &Path| {
        let optimized = optimize(graph, &model.passes.options()).unwrap();
        let inputs = load_derived_weights(
            &optimized.graph,
            &optimized.weights,
            ckpt,
            NameMap::of(model).unwrap(),
        )
        .unwrap();
        (optimized, inputs)
    };
    let (transformer, mut t_inputs) = weights(
        &cfg.transformer,
        flux::build_transformer(&cfg.transformer).unwrap(),
        &fixtures.join("tiny-schnell/diffusers"),
    );
    let l = &spec.latent;
    let [b, tokens, features] = l.packed().map(|d| d as usize);
    let tensor = |shape: Vec<usize>, data: Vec<f32>| Tensor::new(shape, data).unwrap();
    let t = spec.text_tokens as usize;
    t_inputs.insert(
        "encoder_hidden_states".into(),
        tensor(
            vec![b, t, spec.joint_attention_dim as usize],
            embeds.to_vec(),
        ),
    );
    t_inputs.insert(
        "pooled_projections".into(),
        tensor(
            vec![b, spec.pooled_projection_dim as usize],
            pooled.to_vec(),
        ),
    );
    t_inputs.insert(
        "img_ids".into(),
        tensor(vec![tokens, 3], spec.img_ids.clone()),
    );
    t_inputs.insert("txt_ids".into(), tensor(vec![t, 3], spec.txt_ids.clone()));
    let schedule = FlowMatchEuler::schnell()
        .schedule(spec.steps as usize, tokens)
        .unwrap();
    let mut latents = start.to_vec();
    for (i, &timestep) in spec.timesteps.iter().enumerate() {
        t_inputs.insert("timestep".into(), tensor(vec![b], vec![timestep; b]));
        t_inputs.insert(
            "hidden_states".into(),
            tensor(vec![b, tokens, features], latents.clone()),
        );
        let v = interp::run(&transformer.graph, &t_inputs).unwrap()["sample"].clone();
        schedule.euler_step(i, &mut latents, &v.data).unwrap();
    }
    let (c, h, w) = (l.channels as usize, l.height as usize, l.width as usize);
    let nchw = unpack_latents(&latents, b, c, h, w).unwrap();
    let inv = 1.0 / spec.vae_scaling_factor;
    let z = Tensor::new(
        [b, c, h, w],
        nchw.iter()
            .map(|&x| x * inv + spec.vae_shift_factor)
            .collect(),
    )
    .unwrap();
    let (vae, mut v_inputs) = weights(
        &cfg.vae,
        build_vae_decoder(&cfg.vae).unwrap(),
        &fixtures.join("tiny-vae/diffusers"),
    );
    v_inputs.insert("z".into(), permute4(&z, [0, 2, 3, 1]));
    let image = interp::run(&vae.graph, &v_inputs).unwrap()["sample"]
        .data
        .clone();
    HostRun { latents, image }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (f64::from(x) - f64::from(y)).powi(2);
        n += f64::from(y).powi(2);
    }
    (d / n).sqrt()
}

fn load_tiny_pipeline(dir: &Path) -> Pipeline {
    let fixtures = root().join("tests/fixtures");
    let options = LoadOptions {
        progress: false,
        ..LoadOptions::default()
    };
    Pipeline::load(
        dir,
        &fixtures.join("tiny-schnell/diffusers"),
        &fixtures.join("tiny-vae/diffusers"),
        &options,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The tiny pipeline's prompt embeddings, pooled embedding and starting
/// latents (deterministic, in [-1, 1)).
fn tiny_pipeline_inputs(p: &Pipeline) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        pseudo_random(p.embeds_len(), 11),
        pseudo_random(p.pooled_len(), 12),
        pseudo_random(p.latents_len(), 13),
    )
}

#[test]
fn tiny_pipeline_from_given_latents_matches_the_host_reference() {
    require_gpu!("tiny_pipeline_from_given_latents_matches_the_host_reference");
    let mut failures = Vec::new();
    // Hoisted conditioning or not; cuDNN's convolutions too: a pipeline
    // records the engines' steps on its own stream, which the convolutions
    // must follow into the graph.
    for (hoist, cudnn, capture_graph) in [
        (true, false, true),
        (true, false, false),
        (false, false, true),
        (true, true, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = compile_tiny_pipeline(dir.path(), None, cudnn, hoist);
        let fixtures = root().join("tests/fixtures");
        let options = LoadOptions {
            progress: false,
            capture_graph,
            ..LoadOptions::default()
        };
        let mut p = Pipeline::load(
            dir.path(),
            &fixtures.join("tiny-schnell/diffusers"),
            &fixtures.join("tiny-vae/diffusers"),
            &options,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (embeds, pooled, start) = tiny_pipeline_inputs(&p);
        let image = p
            .generate(&embeds, &pooled, Start::Latents(&start))
            .unwrap();
        let host = host_pipeline(&cfg, &embeds, &pooled, &start);
        let latents_error = rel_l2(&p.final_latents().unwrap(), &host.latents);
        let image_error = rel_l2(&image.data, &host.image);
        println!(
            "tiny pipeline f32 (graph {capture_graph}, cuDNN {cudnn}, hoisted conditioning \
             {hoist}): final latents {latents_error:.3e}, image {image_error:.3e} vs the host \
             reference"
        );
        assert_eq!(p.conditioning().is_some(), hoist);
        assert_eq!(image.data.len(), 64 * 48 * 3);
        // A second run gives the same bits (the inputs are refreshed every step).
        let again = p
            .generate(&embeds, &pooled, Start::Latents(&start))
            .unwrap();
        if again.data != image.data {
            failures.push(format!(
                "graph {capture_graph}, cuDNN {cudnn}, hoisted {hoist}: a second run differs"
            ));
        }
        for (what, e) in [("latents", latents_error), ("image", image_error)] {
            if e.is_nan() || e > 1e-4 {
                failures.push(format!(
                    "graph {capture_graph}, cuDNN {cudnn}, hoisted {hoist}: {what} {e:e}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn tiny_pipeline_in_bf16_stays_near_the_f32_reference() {
    require_gpu!("tiny_pipeline_in_bf16_stays_near_the_f32_reference");
    let reference_dir = tempfile::tempdir().unwrap();
    let cfg = compile_tiny_pipeline(reference_dir.path(), None, false, true);
    let dir = tempfile::tempdir().unwrap();
    compile_tiny_pipeline(dir.path(), Some("bf16"), false, true);
    let mut p = load_tiny_pipeline(dir.path());
    let (embeds, pooled, start) = tiny_pipeline_inputs(&p);
    let image = p
        .generate(&embeds, &pooled, Start::Latents(&start))
        .unwrap();
    let host = host_pipeline(&cfg, &embeds, &pooled, &start);
    let latents_error = rel_l2(&p.final_latents().unwrap(), &host.latents);
    let image_error = rel_l2(&image.data, &host.image);
    println!(
        "tiny pipeline bf16: final latents {latents_error:.3e}, image {image_error:.3e} vs the f32 \
         host reference"
    );
    assert!(latents_error <= 5e-2, "latents {latents_error:e}");
    assert!(image_error <= 5e-2, "image {image_error:e}");
}

#[test]
fn tiny_pipeline_noise_is_seeded_standard_normal() {
    require_gpu!("tiny_pipeline_noise_is_seeded_standard_normal");
    let dir = tempfile::tempdir().unwrap();
    let cfg = compile_tiny_pipeline(dir.path(), None, false, true);
    let mut p = load_tiny_pipeline(dir.path());
    let spec = p.spec().clone();
    let l = spec.latent;
    let (b, c, h, w) = (
        l.batch as usize,
        l.channels as usize,
        l.height as usize,
        l.width as usize,
    );
    // The GPU draws the documented stream (host mirror, to libm accuracy).
    let gpu = p.noise(42).unwrap();
    let host = pack_latents(&noise::noise(42, b * c * h * w), b, c, h, w).unwrap();
    let mirror_error = rel_l2(&gpu, &host);
    println!("noise vs the host mirror: {mirror_error:.3e}");
    assert!(mirror_error <= 1e-5, "{mirror_error:e}");
    assert_ne!(p.noise(43).unwrap(), gpu);
    // Statistics over many seeds (192 values per draw).
    let mut all = Vec::new();
    for seed in 0..200 {
        all.extend(p.noise(seed).unwrap());
    }
    let n = all.len() as f64;
    let mean = all.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let std = (all
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    println!("noise over {n} values: mean {mean:.4}, std {std:.4}");
    assert!(
        mean.abs() < 0.02 && (std - 1.0).abs() < 0.02,
        "mean {mean}, std {std}"
    );
    // A seeded run: same seed, same image bits; it matches the host
    // reference started from the same noise.
    let (embeds, pooled, _) = tiny_pipeline_inputs(&p);
    let first = p.generate(&embeds, &pooled, Start::Seed(42)).unwrap();
    let second = p.generate(&embeds, &pooled, Start::Seed(42)).unwrap();
    assert_eq!(first.data, second.data, "same seed, different images");
    let other = p.generate(&embeds, &pooled, Start::Seed(7)).unwrap();
    assert_ne!(first.data, other.data);
    let reference = host_pipeline(&cfg, &embeds, &pooled, &gpu);
    let error = rel_l2(&first.data, &reference.image);
    println!("seeded run vs the host reference from the same noise: {error:.3e}");
    assert!(error <= 1e-4, "{error:e}");
    assert_eq!(first.to_u8(0).unwrap().len(), 64 * 48 * 3);
}
