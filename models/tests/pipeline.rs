//! Tests of pipeline files (`fluxc_models::pipeline`): the presets load and
//! give the schedules `scheduler.rs` computes, shapes override both
//! sub-models, and every rule fails at its key.

use std::path::Path;

use fluxc_artifact::ElemType;
use fluxc_ir::DType;
use fluxc_models::config::{preset_path, ConfigError, PIPELINE_PRESETS};
use fluxc_models::pipeline::{is_pipeline_file, is_pipeline_source, PipelineConfig};
use fluxc_models::scheduler::{FlowMatchEuler, TorchDevice};
use fluxc_models::Part;

#[test]
fn every_pipeline_preset_loads_and_its_spec_validates() {
    for name in PIPELINE_PRESETS {
        let path = preset_path(name);
        assert!(is_pipeline_file(&path), "{name}");
        let p = PipelineConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.name, name);
        let spec = p.spec().unwrap();
        spec.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(spec.steps as usize, p.steps);
        assert_eq!(p.transformer.shapes.height, p.vae.shapes.height);
        assert_eq!(p.transformer.shapes.width, p.vae.shapes.width);
    }
    assert!(!is_pipeline_file(&preset_path("flux-schnell")));
}

#[test]
fn schnell_and_dev_specs_follow_the_scheduler() {
    let schnell = PipelineConfig::load(&preset_path("flux-schnell-pipeline"))
        .unwrap()
        .spec()
        .unwrap();
    assert_eq!(schnell.sigmas, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    assert_eq!(schnell.guidance, None);
    assert_eq!(schnell.transformer.guidance, None);
    assert_eq!(schnell.latent_dtype, ElemType::Bf16);
    assert_eq!(schnell.latent.packed(), [1, 4096, 64]);
    assert_eq!(schnell.image, [1024, 1024, 3]);
    assert_eq!(schnell.text_tokens, 256);
    assert_eq!(schnell.img_ids.len(), 4096 * 3);
    assert_eq!(&schnell.img_ids[3 * 65..3 * 66], &[0.0, 1.0, 1.0]);

    let dev = PipelineConfig::load(&preset_path("flux-dev-pipeline"))
        .unwrap()
        .spec()
        .unwrap();
    let expected = FlowMatchEuler::dev().schedule(28, 4096).unwrap();
    assert_eq!(dev.sigmas, expected.sigmas);
    assert_eq!(
        dev.timesteps,
        expected
            .transformer_timesteps(DType::BF16, TorchDevice::Cuda)
            .unwrap()
    );
    assert_eq!(dev.guidance, Some(3.5));
    assert_eq!(dev.transformer.guidance.as_deref(), Some("guidance"));
    assert_eq!(dev.dt(), expected.dt);
    assert_eq!(dev.vae_scaling_factor, 0.3611);
}

#[test]
fn the_tiny_pipeline_overrides_the_vae_size() {
    let p = PipelineConfig::load(&preset_path("tiny-schnell-pipeline")).unwrap();
    assert_eq!((p.vae.shapes.height, p.vae.shapes.width), (64, 48));
    let spec = p.spec().unwrap();
    assert_eq!(spec.latent.channels, 4);
    assert_eq!((spec.latent.height, spec.latent.width), (8, 6));
    assert_eq!(spec.latent.packed(), [1, 12, 16]);
    assert_eq!(spec.text_tokens, 7);
    assert_eq!(spec.latent_dtype, ElemType::F32);
}

/// Writes `text` as a pipeline file next to copies of the tiny presets and
/// loads it.
fn load(text: &str) -> Result<PipelineConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    for preset in ["tiny-schnell", "tiny-dev", "tiny-vae"] {
        std::fs::copy(
            preset_path(preset),
            dir.path().join(format!("{preset}.toml")),
        )
        .unwrap();
    }
    let path = dir.path().join("p.toml");
    std::fs::write(&path, text).unwrap();
    PipelineConfig::load(&path)
}

const TINY: &str = r#"[model]
name = "p"
architecture = "flux-pipeline"

[pipeline]
transformer = "tiny-schnell.toml"
vae = "tiny-vae.toml"
scheduler = "schnell"
steps = 4

[shapes]
height = 64
width = 48
"#;

#[test]
fn rules_fail_at_their_keys() {
    load(TINY).unwrap();
    let cases = [
        (
            "steps = 4",
            "steps = 0",
            "p.toml:9:1: pipeline.steps: must be in 1..=",
        ),
        (
            "steps = 4",
            "steps = 4\nguidance_scale = 3.5",
            "pipeline.guidance_scale: the transformer has no guidance embedding",
        ),
        (
            "tiny-schnell.toml",
            "tiny-dev.toml",
            "pipeline.guidance_scale: is required",
        ),
        (
            "vae = \"tiny-vae.toml\"",
            "vae = \"tiny-schnell.toml\"",
            "pipeline.vae: ",
        ),
        ("height = 64", "height = 60", "shapes.height"),
        (
            "scheduler = \"schnell\"",
            "scheduler = \"slow\"",
            "unknown variant",
        ),
        ("steps = 4", "steps = 4\nsteps_extra = 1", "unknown field"),
    ];
    for (from, to, message) in cases {
        let text = TINY.replace(from, to);
        let err = load(&text).unwrap_err().to_string();
        assert!(
            err.contains(message),
            "`{to}`: {err} does not say `{message}`"
        );
    }
    let missing = TINY.replace("tiny-vae.toml", "nope.toml");
    assert!(matches!(load(&missing), Err(ConfigError::Io { .. })));
}

#[test]
fn dev_pipeline_takes_a_guidance_scale() {
    let text = TINY
        .replace("tiny-schnell.toml", "tiny-dev.toml")
        .replace("\"schnell\"", "\"dev\"")
        .replace("steps = 4", "steps = 28\nguidance_scale = 3.5");
    let spec = load(&text).unwrap().spec().unwrap();
    assert_eq!(spec.guidance, Some(3.5));
    assert_eq!(spec.sigmas.len(), 29);
    assert!(
        spec.sigmas[1] > 1.0 - 1.0 / 28.0,
        "dev shifts the sigmas up"
    );
}

#[test]
fn pipeline_sources_are_recognized() {
    assert!(is_pipeline_source(TINY));
    assert!(!is_pipeline_source(
        "[model]\narchitecture = \"flux-transformer\""
    ));
    assert!(!is_pipeline_source("not toml ["));
    assert!(!is_pipeline_file(Path::new("/nonexistent.toml")));
}

/// `hoist_conditioning` is on by default: the spec names the conditioning
/// (one step's width: 12 vectors per double block, 3 per single block, 2 for
/// norm_out), and the two transformer parts are the conditioning of every
/// step, without the q/k/v fusion, and the per-step forward. Off, neither.
#[test]
fn conditioning_is_hoisted_unless_turned_off() {
    let p = load(TINY).unwrap();
    assert!(p.hoist_conditioning);
    let c = p.spec().unwrap().conditioning.expect("hoisted");
    assert_eq!(c.width, (2 * 12 + 2 * 3 + 2) * 32);
    assert_eq!(
        (c.output.as_str(), c.modulation.as_str()),
        ("modulation", "modulation")
    );
    let conditioning = p.conditioning_model();
    assert_eq!(conditioning.part, Part::Conditioning { steps: 4 });
    assert_eq!(conditioning.model.name, "tiny-schnell-conditioning");
    assert!(!conditioning.passes.fuse_qkv);
    let step = p.step_model();
    assert_eq!(step.part, Part::Step);
    assert_eq!(step.passes, p.transformer.passes);
    assert_eq!(p.transformer.part, Part::Whole);
    let dirs = |p: &PipelineConfig| -> Vec<&str> { p.artifacts().iter().map(|a| a.0).collect() };
    assert_eq!(dirs(&p), ["conditioning", "transformer", "vae"]);

    let off = TINY.replace("steps = 4", "steps = 4\nhoist_conditioning = false");
    let p = load(&off).unwrap();
    assert!(!p.hoist_conditioning);
    assert_eq!(p.spec().unwrap().conditioning, None);
    assert_eq!(dirs(&p), ["transformer", "vae"]);
    assert_eq!(p.artifacts()[0].1.part, Part::Whole);
}
