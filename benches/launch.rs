//! Criterion bench of the runtime on a GPU: the host time of one CUDA-graph
//! launch of a compiled model (what an application pays per forward on the
//! CPU; the GPU time is the forward benchmark's, `benches/peers/`). The model
//! is the tiny FLUX.1-schnell preset in bf16 with its committed fixture
//! weights, so the bench needs nothing but a GPU; without one it says so and
//! measures nothing. CI only compiles it (`cargo bench --no-run`).

#[path = "../tests/common/repo.rs"]
mod repo;

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use fluxc::artifact::CheckpointLayout;
use fluxc::codegen::{generate, write_artifact, CodegenOptions};
use fluxc::models::checkpoint::{resolve_derived_sources, CheckpointFormat, NameMap};
use fluxc::models::{flux, ModelConfig};
use fluxc::passes::pipeline::optimize;
use fluxc::runtime::{cuda, Engine, LoadOptions};
use repo::root;

/// tiny-schnell in bf16, compiled into `dir` for diffusers-layout weights.
fn compile_tiny(dir: &Path) {
    let text = std::fs::read_to_string(root().join("models/tiny-schnell.toml")).unwrap();
    let cfg = ModelConfig::from_toml_str(
        &text.replace("dtype = \"f32\"", "dtype = \"bf16\""),
        Path::new("tiny-schnell"),
    )
    .unwrap();
    let optimized = optimize(
        flux::build_transformer(&cfg).unwrap(),
        &cfg.passes.options(),
    )
    .unwrap();
    let map = NameMap::of(&cfg).unwrap();
    let sources = resolve_derived_sources(
        &optimized.graph,
        &optimized.weights,
        CheckpointFormat::Diffusers,
        map,
    )
    .unwrap();
    let opts = CodegenOptions {
        model_name: cfg.model.name.clone(),
        layouts: vec![(
            CheckpointLayout {
                name: "diffusers".into(),
                strip_prefixes: vec![],
            },
            sources,
        )],
        reuse_memory: true,
    };
    write_artifact(dir, &generate(&optimized, &opts).unwrap()).unwrap();
}

fn launch(c: &mut Criterion) {
    if let Err(why) = cuda::check_libraries(true).and_then(|()| cuda::check_device(0)) {
        eprintln!("launch bench skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("artifact");
    compile_tiny(&artifact);
    let options = LoadOptions {
        progress: false,
        ..LoadOptions::default()
    };
    let weights = root().join("tests/fixtures/tiny-schnell/diffusers");
    let mut engine = Engine::load(&artifact, &weights, &options).unwrap();
    // The values do not change a launch's host cost; every input is set.
    let inputs: Vec<(String, usize)> = engine
        .inputs()
        .iter()
        .map(|b| {
            let elements = engine.input_buffer(&b.name).unwrap().elements();
            (b.name.clone(), elements as usize)
        })
        .collect();
    for (name, elements) in inputs {
        engine.set_input(&name, &vec![0.25; elements]).unwrap();
    }
    // Each timed launch starts on an idle stream (Engine::time_replays), so
    // the call's wall time is the launch cost, not a wait for queue space.
    c.bench_function("cuda graph launch, tiny-schnell bf16 (host)", |b| {
        b.iter_custom(|iters| {
            let timing = engine.time_replays(1, iters as usize).unwrap();
            Duration::from_secs_f64(timing.launch_us.iter().sum::<f64>() / 1e6)
        })
    });
}

criterion_group!(runtime, launch);
criterion_main!(runtime);
