//! Criterion benches of the compiler itself (no GPU): building FLUX.1-schnell
//! from its model.toml, each pass on the full graph (dce, cse, simplify, the
//! q/k/v e-graph fusion, stacking the one-row linears, fp8 insertion for
//! linears and attention, weight hoisting, the fusion plan), the whole pass
//! pipeline with fp8, codegen of the full model, serializing its schedule
//! and writing the artifact, and the interpreter on a tiny model. The host
//! time of a CUDA-graph launch is `benches/launch.rs` (GPU only).
//! CI only compiles them (`cargo bench --no-run`); run with `cargo bench`.

use std::collections::HashMap;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use fluxc::codegen::{generate, schedule_json, write_artifact, CodegenOptions};
use fluxc::ir::interp::{self, Tensor};
use fluxc::ir::{Graph, Op};
use fluxc::models::{flux, ModelConfig};
use fluxc::passes::pipeline::optimize;
use fluxc::passes::{
    cse, dce, fp8, fp8_attention, fuse_qkv, fusion, hoist_weights, simplify, Fp8Mode, PassOptions,
};

fn config(preset: &str) -> ModelConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/{preset}.toml"));
    ModelConfig::load(&path).expect("preset loads")
}

/// The graph right before q/k/v fusion (after dce, cse, simplify).
fn cleaned(graph: &Graph) -> Graph {
    let mut g = graph.clone();
    dce::eliminate_dead_code(&mut g);
    cse::eliminate_common_subexpressions(&mut g).unwrap();
    simplify::simplify(&mut g).unwrap();
    g
}

fn benches(c: &mut Criterion) {
    let cfg = config("flux-schnell");
    let graph = flux::build_transformer(&cfg).unwrap();
    let mut group = c.benchmark_group("flux-schnell");
    group.sample_size(10);
    group.bench_function("build graph", |b| {
        b.iter(|| flux::build_transformer(&cfg).unwrap())
    });
    group.bench_function("pass dce", |b| {
        b.iter(|| dce::eliminate_dead_code(&mut graph.clone()))
    });
    group.bench_function("pass cse", |b| {
        b.iter(|| cse::eliminate_common_subexpressions(&mut graph.clone()).unwrap())
    });
    group.bench_function("pass simplify", |b| {
        b.iter(|| simplify::simplify(&mut graph.clone()).unwrap())
    });
    let before_fusion = cleaned(&graph);
    group.bench_function("pass fuse_qkv (e-graph)", |b| {
        b.iter(|| fuse_qkv::fuse_shared_input_linears(&mut before_fusion.clone(), 16).unwrap())
    });
    let mut fused = before_fusion.clone();
    fuse_qkv::fuse_shared_input_linears(&mut fused, 16).unwrap();
    group.bench_function("pass stack_one_row_linears", |b| {
        b.iter(|| fuse_qkv::stack_one_row_linears(&mut fused.clone()).unwrap())
    });
    let policy = cfg.passes.options().fp8_policy;
    group.bench_function("pass fp8 (linears, per row)", |b| {
        b.iter(|| fp8::insert_fp8(&mut fused.clone(), Fp8Mode::DynamicRow, &policy).unwrap())
    });
    group.bench_function("pass fp8_attention", |b| {
        b.iter(|| {
            fp8_attention::insert_fp8_attention(&mut fused.clone(), Fp8Mode::DynamicRow, &policy)
                .unwrap()
        })
    });
    group.bench_function("pass hoist_weights", |b| {
        b.iter(|| hoist_weights::hoist_weights(&mut fused.clone()).unwrap())
    });
    hoist_weights::hoist_weights(&mut fused).unwrap();
    group.bench_function("pass fusion (plan)", |b| {
        b.iter(|| fusion::plan_fusion(&fused, true).unwrap())
    });
    let fp8_options = PassOptions {
        fp8: Fp8Mode::DynamicRow,
        ..cfg.passes.options()
    };
    group.bench_function("pass pipeline (fp8 per row)", |b| {
        b.iter(|| optimize(graph.clone(), &fp8_options).unwrap())
    });
    let optimized = optimize(graph.clone(), &cfg.passes.options()).unwrap();
    let opts = CodegenOptions {
        model_name: cfg.model.name.clone(),
        layouts: Vec::new(),
        reuse_memory: true,
    };
    group.bench_function("codegen", |b| {
        b.iter(|| generate(&optimized, &opts).unwrap())
    });
    let generated = generate(&optimized, &opts).unwrap();
    group.bench_function("serialize schedule", |b| {
        b.iter(|| schedule_json(&generated.schedule).unwrap())
    });
    let out = tempfile::tempdir().unwrap();
    group.bench_function("write artifact", |b| {
        b.iter(|| write_artifact(&out.path().join("artifact"), &generated).unwrap())
    });
    group.finish();

    let tiny = config("tiny-schnell");
    let tiny_graph = flux::build_transformer(&tiny).unwrap();
    let inputs = ones(&tiny_graph);
    c.bench_function("interpreter tiny-schnell", |b| {
        b.iter(|| interp::run(&tiny_graph, &inputs).unwrap())
    });
}

/// 0.01 in every input (values do not matter for timing).
fn ones(graph: &Graph) -> HashMap<String, Tensor> {
    graph
        .inputs()
        .into_iter()
        .map(|id| {
            let node = graph.node(id);
            let Op::Input { name, .. } = &node.op else {
                unreachable!("inputs are Input nodes")
            };
            (name.clone(), Tensor::full(node.ty.shape.clone(), 0.01))
        })
        .collect()
}

criterion_group!(compiler, benches);
criterion_main!(compiler);
