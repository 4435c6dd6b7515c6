//! `fluxc check` end to end: the figures it reports for the presets, and the
//! errors (never panics) it gives for bad model files.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fluxc() -> Command {
    Command::cargo_bin("fluxc").unwrap()
}

/// Writes `text` to a model.toml in a fresh temporary directory.
fn model_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// The tiny-schnell preset with one line replaced.
fn tiny_with(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(repo().join("models/tiny-schnell.toml")).unwrap();
    assert!(text.contains(from), "preset has no `{from}`");
    text.replace(from, to)
}

/// Runs `fluxc check` on `path`, expecting failure; returns stderr.
fn check_fails(path: &Path) -> String {
    let out = fluxc().arg("check").arg(path).assert().failure().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn flux_dev_reports_parameters_and_flops() {
    fluxc()
        .arg("check")
        .arg(repo().join("models/flux-dev.toml"))
        .assert()
        .success()
        .stdout(predicate::str::contains("4096 image + 512 text tokens"))
        .stdout(predicate::str::contains("parameters       11.901 B"))
        .stdout(predicate::str::contains(
            "GEMM FLOPs       59.512 TFLOP per forward",
        ))
        .stdout(predicate::str::contains(
            "attention FLOPs  14.872 TFLOP per forward (57 attention)",
        ));
}

#[test]
fn a_pipeline_file_reports_its_loop_and_both_models() {
    fluxc()
        .arg("check")
        .arg(repo().join("models/tiny-schnell-pipeline.toml"))
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "pipeline `tiny-schnell-pipeline`: 4 schnell steps",
        ))
        // tiny-schnell: (2 double × 12 + 2 single × 3 + 2) × 32 channels.
        .stdout(predicate::str::contains(
            "conditioning     hoisted: 4 steps' modulation vectors (1024 wide)",
        ))
        .stdout(predicate::str::contains("FLUX.1 transformer"))
        .stdout(predicate::str::contains("conv FLOPs"));
}

#[test]
fn flux_schnell_has_no_guidance_embedder() {
    fluxc()
        .arg("check")
        .arg(repo().join("models/flux-schnell.toml"))
        .assert()
        .success()
        .stdout(predicate::str::contains("guidance no"))
        .stdout(predicate::str::contains("4096 image + 256 text tokens"));
}

#[test]
fn flux_vae_reports_parameters_and_conv_flops() {
    fluxc()
        .arg("check")
        .arg(repo().join("models/flux-vae.toml"))
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "flux-vae: FLUX VAE decoder, bf16, 1024x1024 (batch 1): latents 128x128x16 -> image \
             1024x1024x3",
        ))
        .stdout(predicate::str::contains(
            "4 up blocks x 3 resnets, channels [512, 512, 256, 128], 32 groups, mid attention yes",
        ))
        .stdout(predicate::str::contains("parameters       49.545 M"))
        .stdout(predicate::str::contains(
            "conv FLOPs       9.888 TFLOP per forward (35 conv2d)",
        ))
        .stdout(predicate::str::contains("(1 attention)"));
}

#[test]
fn fp8_line_says_what_is_quantized() {
    let tiny = std::fs::read_to_string(repo().join("models/tiny-schnell.toml")).unwrap();
    let bf16 = tiny.replace("dtype = \"f32\"", "dtype = \"bf16\"");
    // 128-wide heads: what the fp8 attention kernel takes.
    let wide = bf16
        .replace("attention_head_dim = 16", "attention_head_dim = 128")
        .replace("hidden_size = 32", "hidden_size = 256")
        .replace("[4, 6, 6]", "[16, 56, 56]");
    for (text, line) in [
        (tiny.clone(), "  fp8              off\n"),
        // fp8_attention (on by default) means nothing without fp8.
        (
            format!("{tiny}fp8_attention = true\n"),
            "  fp8              off\n",
        ),
        (
            format!("{bf16}fp8 = \"dynamic-row\"\nfp8_attention = false\n"),
            "  fp8              dynamic-row linears; attention not quantized \
             (fp8_attention = false)\n",
        ),
        (
            format!("{bf16}fp8 = \"dynamic-tensor\"\nfp8_attention = true\n"),
            "  fp8              dynamic-tensor linears; attention e4m3 per tensor (0 of 4 \
             attentions: bf16, 128-wide heads)\n",
        ),
        (
            format!("{wide}fp8 = \"dynamic-row\"\nfp8_attention = true\n"),
            "  fp8              dynamic-row linears; attention e4m3 per tensor (4 of 4 \
             attentions: bf16, 128-wide heads)\n",
        ),
        // The default with fp8 on.
        (
            format!("{wide}fp8 = \"dynamic-row\"\n"),
            "  fp8              dynamic-row linears; attention e4m3 per tensor (4 of 4 \
             attentions: bf16, 128-wide heads)\n",
        ),
    ] {
        let (_dir, path) = model_file(&text);
        fluxc()
            .arg("check")
            .arg(&path)
            .assert()
            .success()
            .stdout(predicate::str::contains(line));
    }
}

#[test]
fn vae_without_its_section_names_it() {
    let text = std::fs::read_to_string(repo().join("models/tiny-vae.toml")).unwrap();
    let start = text.find("[vae]").unwrap();
    let end = text.find("[shapes]").unwrap();
    let (_dir, path) = model_file(&format!("{}{}", &text[..start], &text[end..]));
    let stderr = check_fails(&path);
    assert!(
        stderr.contains(
            "model.architecture: [vae] is required for architecture \"flux-vae-decoder\""
        ),
        "{stderr}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let stderr = check_fails(Path::new("no/such/model.toml"));
    assert!(
        stderr.contains("cannot read model file `no/such/model.toml`"),
        "{stderr}"
    );
}

#[test]
fn malformed_toml_gives_line_and_column() {
    let (_dir, path) = model_file(&tiny_with("num_layers = 2", "num_layers = = 2"));
    let stderr = check_fails(&path);
    assert!(stderr.contains("model.toml:"), "{stderr}");
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("num_layers"))
        .unwrap()
        + 1;
    assert!(stderr.contains(&format!(":{line}:")), "{stderr}");
}

#[test]
fn unknown_key_is_rejected() {
    let (_dir, path) = model_file(&tiny_with(
        "num_layers = 2",
        "num_layers = 2\nnum_heads = 2",
    ));
    let stderr = check_fails(&path);
    assert!(stderr.contains("num_heads"), "{stderr}");
}

#[test]
fn heads_times_head_dim_must_equal_hidden_size() {
    let (_dir, path) = model_file(&tiny_with("hidden_size = 32", "hidden_size = 48"));
    let stderr = check_fails(&path);
    assert!(stderr.contains("transformer.hidden_size"), "{stderr}");
}

#[test]
fn rope_axes_must_sum_to_head_dim() {
    let (_dir, path) = model_file(&tiny_with("[4, 6, 6]", "[4, 6, 8]"));
    let stderr = check_fails(&path);
    assert!(stderr.contains("transformer.axes_dims_rope"), "{stderr}");
}

#[test]
fn image_size_must_be_a_multiple_of_16() {
    let (_dir, path) = model_file(&tiny_with("height = 64", "height = 60"));
    let stderr = check_fails(&path);
    assert!(stderr.contains("shapes.height"), "{stderr}");
    assert!(stderr.contains("multiple of 16"), "{stderr}");
}

#[test]
fn usage_errors_exit_with_2() {
    fluxc().arg("check").assert().failure().code(2);
    fluxc().arg("frobnicate").assert().failure().code(2);
}
