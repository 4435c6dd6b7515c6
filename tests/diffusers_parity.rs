//! The CPU interpreter running fluxc's FLUX graph gives diffusers' answer.
//!
//! Fixtures in `tests/fixtures/<preset>/` were written by
//! `tests/fixtures/make_flux_fixtures.py` from diffusers 0.42.1's
//! `FluxTransformer2DModel` in fp32 (random weights, both checkpoint layouts,
//! the forward's inputs and output). Each test builds the graph from the
//! preset's model.toml, loads the weights through the real checkpoint loader
//! and compares the interpreter's `sample` with diffusers' by relative L2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fluxc::ir::interp::{self, Tensor};
use fluxc::models::checkpoint::{load_weights, read_safetensors, NameMap};
use fluxc::models::{flux, ModelConfig};

/// Relative L2 error allowed between two fp32 implementations of the same
/// math (summation order and libm differences only).
const TOLERANCE: f64 = 1e-5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds `preset`, loads weights from `checkpoint` (relative to the preset's
/// fixture dir) and returns the relative L2 error of `sample` vs diffusers.
fn parity(preset: &str, checkpoint: &str) -> f64 {
    let cfg = ModelConfig::load(&root().join(format!("models/{preset}.toml"))).unwrap();
    let graph = flux::build_transformer(&cfg).unwrap();
    let fixtures = root().join("tests/fixtures").join(preset);
    let mut inputs: HashMap<String, Tensor> = load_weights(
        &graph,
        &fixtures.join(checkpoint),
        NameMap::of(&cfg).unwrap(),
    )
    .unwrap();
    let mut io = read_safetensors(&fixtures.join("io.safetensors")).unwrap();
    let expected = io.remove("sample").expect("fixture holds the output");
    inputs.extend(io);
    let outputs = interp::run(&graph, &inputs).unwrap();
    let error = outputs["sample"].rel_l2(&expected);
    eprintln!("{preset} from {checkpoint}: relative L2 error {error:e}");
    error
}

#[test]
fn schnell_from_sharded_diffusers_checkpoint() {
    assert!(parity("tiny-schnell", "diffusers") <= TOLERANCE);
}

#[test]
fn schnell_from_bfl_checkpoint() {
    assert!(parity("tiny-schnell", "bfl.safetensors") <= TOLERANCE);
}

#[test]
fn dev_with_guidance_from_sharded_diffusers_checkpoint() {
    assert!(parity("tiny-dev", "diffusers") <= TOLERANCE);
}

#[test]
fn dev_with_guidance_from_bfl_checkpoint() {
    assert!(parity("tiny-dev", "bfl.safetensors") <= TOLERANCE);
}

/// The check above is only meaningful if a wrong model misses it: feeding the
/// dev fixtures with the guidance nudged by 0.01 must fail the tolerance.
#[test]
fn a_perturbed_input_fails_the_tolerance() {
    let cfg = ModelConfig::load(&root().join("models/tiny-dev.toml")).unwrap();
    let graph = flux::build_transformer(&cfg).unwrap();
    let fixtures: &Path = &root().join("tests/fixtures/tiny-dev");
    let mut inputs = load_weights(
        &graph,
        &fixtures.join("diffusers"),
        NameMap::of(&cfg).unwrap(),
    )
    .unwrap();
    let mut io = read_safetensors(&fixtures.join("io.safetensors")).unwrap();
    let expected = io.remove("sample").unwrap();
    inputs.extend(io);
    let guidance = inputs.get_mut("guidance").unwrap();
    guidance.data.iter_mut().for_each(|g| *g += 0.01);
    let outputs = interp::run(&graph, &inputs).unwrap();
    assert!(outputs["sample"].rel_l2(&expected) > 100.0 * TOLERANCE);
}
