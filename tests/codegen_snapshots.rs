//! Snapshots of what codegen emits: every kernel and the schedule of the
//! tiny presets (fp8 off, epilogue fusion on and off; bf16 with fp8 per row
//! and per tensor; the tiny VAE decoder), and a summary of the full
//! FLUX.1-schnell and FLUX VAE schedules. A change here changes what runs on the GPU:
//! review it line by line (`cargo insta review`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use fluxc::artifact::{Region, Step};
use fluxc::codegen::{generate, schedule_json, CodegenOptions, Generated};
use fluxc::models::{build_graph, ModelConfig};
use fluxc::passes::pipeline::optimize;
use fluxc::passes::{Fp8Mode, PassOptions};

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
    let opts = CodegenOptions {
        model_name: cfg.model.name.clone(),
        layouts: Vec::new(),
        reuse_memory: true,
    };
    generate(&optimized, &opts).unwrap()
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

/// Step counts, kernels, memory and inputs of a schedule.
fn summary(g: &Generated) -> String {
    let s = &g.schedule;
    let mut steps: BTreeMap<&str, usize> = BTreeMap::new();
    for step in &s.steps {
        let kind = match step {
            Step::Launch(_) => "launch",
            Step::Gemm(_) => "gemm",
            Step::Attention(_) => "attention",
            Step::Copy(_) => "copy",
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
