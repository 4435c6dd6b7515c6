//! Tests of the `[vae]` section and of the architecture rules: which
//! sections each architecture needs and rejects, every `[vae]` validation
//! rule with its location, the VAE presets, and the accessors that never
//! panic on an unvalidated config.

mod common;

use std::path::{Path, PathBuf};

use common::line_starting;
use fluxc_ir::IrError;
use fluxc_models::config::{
    preset_path, Architecture, ConfigError, MissingSection, ModelConfig, ModelDType,
};
use fluxc_models::{flux, vae};

/// A valid VAE model.toml with every key spelled out, one per line.
const VAE: &str = r#"[model]
name = "tiny-vae"
architecture = "flux-vae-decoder"
dtype = "f32"

[vae]
in_channels = 3
out_channels = 3
latent_channels = 4
block_out_channels = [8, 16, 32, 32]
layers_per_block = 1
norm_num_groups = 4
scaling_factor = 0.3611
shift_factor = 0.1159
mid_block_add_attention = true

[shapes]
batch = 1
height = 32
width = 48
"#;

/// A valid transformer model.toml (the tiny-schnell values).
const TRANSFORMER: &str = r#"[model]
name = "tiny"
architecture = "flux-transformer"
dtype = "f32"

[transformer]
in_channels = 16
num_layers = 1
num_single_layers = 1
attention_head_dim = 16
num_attention_heads = 2
hidden_size = 32
joint_attention_dim = 24
pooled_projection_dim = 12
guidance_embeds = false
axes_dims_rope = [4, 6, 6]

[shapes]
height = 64
width = 48
text_tokens = 7
"#;

const ORIGIN: &str = "models/x.toml";

fn parse(source: &str) -> Result<ModelConfig, ConfigError> {
    ModelConfig::from_toml_str(source, Path::new(ORIGIN))
}

/// The 1-based line of the first line of `source` starting with `start`.
/// `VAE` with the line `key = ...` replaced by `key = value`.
fn vae_with(key: &str, value: &str) -> String {
    common::with_line(VAE, key, value)
}

/// `source` with the lines starting with `start` removed.
fn without(source: &str, start: &str) -> String {
    source
        .lines()
        .filter(|line| !line.starts_with(start))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// `source` without the table `[name]` and its keys.
fn without_table(source: &str, name: &str) -> String {
    let header = format!("[{name}]");
    let mut inside = false;
    let mut out = String::new();
    for line in source.lines() {
        if line.starts_with('[') {
            inside = line == header;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Asserts that `source` fails validation on `field` at `line`:`column`
/// with a message containing `needle`; returns the message.
fn assert_invalid_at(
    source: &str,
    field: &str,
    (line, column): (usize, usize),
    needle: &str,
) -> String {
    match parse(source) {
        Err(ConfigError::Invalid {
            path,
            field: got_field,
            line: got_line,
            column: got_column,
            message,
        }) => {
            assert_eq!(path, PathBuf::from(ORIGIN));
            assert_eq!(got_field, field, "message: {message}");
            assert_eq!(
                (got_line, got_column),
                (Some(line), Some(column)),
                "{field}"
            );
            assert!(message.contains(needle), "`{needle}` not in: {message}");
            message
        }
        other => panic!("expected an Invalid error on {field}, got {other:?}"),
    }
}

/// Asserts that the `[vae]` key `key` set to `value` is invalid, located at
/// the key, with a message containing `needle`.
fn assert_vae_invalid(key: &str, value: &str, needle: &str) -> String {
    let source = vae_with(key, value);
    let line = line_starting(&source, &format!("{key} = "));
    assert_invalid_at(&source, &format!("vae.{key}"), (line, 1), needle)
}

// --- presets ----------------------------------------------------------------

#[test]
fn flux_vae_preset_matches_the_release() {
    let cfg = ModelConfig::load(&preset_path("flux-vae")).unwrap();
    assert_eq!(cfg.model.architecture, Architecture::FluxVaeDecoder);
    assert_eq!(cfg.model.dtype, ModelDType::Bf16);
    let v = cfg.vae().unwrap();
    assert_eq!(
        (v.in_channels, v.out_channels, v.latent_channels),
        (3, 3, 16)
    );
    assert_eq!(v.block_out_channels, vec![128, 256, 512, 512]);
    assert_eq!((v.layers_per_block, v.norm_num_groups), (2, 32));
    assert_eq!((v.scaling_factor, v.shift_factor), (0.3611, 0.1159));
    assert!(v.mid_block_add_attention);
    assert_eq!(v.mid_channels(), 512);
    assert_eq!((cfg.shapes.height, cfg.shapes.width), (1024, 1024));
    assert_eq!(cfg.latent_size(), (128, 128));
    assert_eq!(cfg.shapes.text_tokens, None);
    assert!(cfg.transformer.is_none());
}

#[test]
fn tiny_vae_preset_is_exact() {
    let cfg = ModelConfig::load(&preset_path("tiny-vae")).unwrap();
    assert_eq!(cfg.model.dtype, ModelDType::F32);
    let v = cfg.vae().unwrap();
    assert_eq!(
        (v.in_channels, v.out_channels, v.latent_channels),
        (3, 3, 4)
    );
    assert_eq!(v.block_out_channels, vec![8, 16, 32, 32]);
    assert_eq!((v.layers_per_block, v.norm_num_groups), (1, 4));
    assert!(v.mid_block_add_attention, "defaulted");
    assert_eq!(cfg.shapes.batch, 1);
    assert_eq!(cfg.latent_size(), (4, 4));
}

// --- [vae] keys ---------------------------------------------------------------

#[test]
fn vae_base_parses_and_attention_defaults_on() {
    let cfg = parse(VAE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.latent_size(), (4, 6));
    let cfg = parse(&without(VAE, "mid_block_add_attention")).unwrap();
    assert!(cfg.vae().unwrap().mid_block_add_attention);
    let cfg = parse(&vae_with("mid_block_add_attention", "false")).unwrap();
    assert!(!cfg.vae().unwrap().mid_block_add_attention);
}

#[test]
fn vae_counts_must_be_at_least_one() {
    for key in [
        "in_channels",
        "out_channels",
        "latent_channels",
        "norm_num_groups",
    ] {
        let message = assert_vae_invalid(key, "0", "at least 1");
        assert_eq!(message, "must be at least 1, got 0");
    }
    // Zero resnets per encoder block still gives one per decoder block.
    assert!(parse(&vae_with("layers_per_block", "0")).is_ok());
}

#[test]
fn block_out_channels_must_have_four_levels() {
    for value in ["[]", "[8, 16, 32]", "[8, 16, 32, 32, 32]"] {
        let message = assert_vae_invalid("block_out_channels", value, "must list 4 levels");
        assert!(message.contains("1/8 of the image size"), "{message}");
    }
}

#[test]
fn block_out_channels_must_be_multiples_of_the_groups() {
    let message = assert_vae_invalid("block_out_channels", "[8, 16, 30, 32]", "entry 2 is 30");
    assert!(message.contains("norm_num_groups (4)"), "{message}");
    assert_vae_invalid("block_out_channels", "[0, 16, 32, 32]", "entry 0 is 0");
    // 32 groups do not divide 8 channels.
    let source = vae_with("norm_num_groups", "32");
    let line = line_starting(&source, "block_out_channels = ");
    assert_invalid_at(&source, "vae.block_out_channels", (line, 1), "entry 0 is 8");
}

#[test]
fn scaling_and_shift_factors_must_be_finite() {
    for (value, shown) in [("0.0", "0"), ("-1.0", "-1"), ("nan", "NaN"), ("inf", "inf")] {
        assert_vae_invalid(
            "scaling_factor",
            value,
            &format!("must be positive and finite, got {shown}"),
        );
    }
    for (value, shown) in [("nan", "NaN"), ("-inf", "-inf")] {
        assert_vae_invalid(
            "shift_factor",
            value,
            &format!("must be finite, got {shown}"),
        );
    }
    assert!(parse(&vae_with("shift_factor", "0.0")).is_ok());
    assert!(parse(&vae_with("shift_factor", "-0.5")).is_ok());
}

#[test]
fn quant_convs_are_not_keys() {
    for key in ["use_quant_conv", "use_post_quant_conv"] {
        let source = VAE.replace("[vae]\n", &format!("[vae]\n{key} = false\n"));
        match parse(&source) {
            Err(ConfigError::Parse { line, message, .. }) => {
                assert_eq!(line, line_starting(&source, key));
                assert!(
                    message.contains(&format!("unknown field `{key}`")),
                    "{message}"
                );
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }
}

// --- sections per architecture -------------------------------------------------

#[test]
fn the_vae_section_is_required() {
    let source = without_table(VAE, "vae");
    let line = line_starting(&source, "architecture");
    let message = assert_invalid_at(&source, "model.architecture", (line, 1), "");
    assert_eq!(
        message,
        "[vae] is required for architecture \"flux-vae-decoder\""
    );
    assert_eq!(
        parse(&source).unwrap_err().to_string(),
        "models/x.toml:3:1: model.architecture: [vae] is required for architecture \
         \"flux-vae-decoder\""
    );
}

#[test]
fn the_transformer_section_is_required() {
    let source = without_table(TRANSFORMER, "transformer");
    let line = line_starting(&source, "architecture");
    let message = assert_invalid_at(&source, "model.architecture", (line, 1), "");
    assert_eq!(
        message,
        "[transformer] is required for architecture \"flux-transformer\""
    );
}

#[test]
fn another_architectures_section_is_rejected() {
    let vae_table = &VAE[VAE.find("[vae]").unwrap()..VAE.find("[shapes]").unwrap()];
    let source = format!("{TRANSFORMER}\n{vae_table}");
    let line = line_starting(&source, "[vae]");
    let message = assert_invalid_at(&source, "vae", (line, 2), "");
    assert_eq!(
        message,
        "[vae] is not used by architecture \"flux-transformer\" (it needs [transformer]); \
         remove it"
    );

    let transformer_table = &TRANSFORMER
        [TRANSFORMER.find("[transformer]").unwrap()..TRANSFORMER.find("[shapes]").unwrap()];
    let source = format!("{VAE}\n{transformer_table}");
    let line = line_starting(&source, "[transformer]");
    assert_invalid_at(
        &source,
        "transformer",
        (line, 2),
        "not used by architecture \"flux-vae-decoder\" (it needs [vae])",
    );
}

#[test]
fn text_tokens_belong_to_the_transformer_only() {
    // Missing: located at the [shapes] table it belongs in.
    let source = without(TRANSFORMER, "text_tokens");
    let line = line_starting(&source, "[shapes]");
    assert_invalid_at(
        &source,
        "shapes.text_tokens",
        (line, 2),
        "is required for architecture \"flux-transformer\"",
    );
    let source = format!("{VAE}text_tokens = 7\n");
    let line = line_starting(&source, "text_tokens");
    assert_invalid_at(
        &source,
        "shapes.text_tokens",
        (line, 1),
        "is not used by architecture \"flux-vae-decoder\"",
    );
}

#[test]
fn unknown_architecture_lists_both() {
    match parse(&VAE.replace("flux-vae-decoder", "vae")) {
        Err(ConfigError::Parse { message, .. }) => assert!(
            message.contains("expected `flux-transformer` or `flux-vae-decoder`"),
            "{message}"
        ),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

// --- accessors and builders on unvalidated configs ----------------------------------

#[test]
fn accessors_report_what_is_missing() {
    let cfg = parse(VAE).unwrap();
    let missing = cfg.transformer().unwrap_err();
    assert_eq!(
        missing,
        MissingSection {
            what: "[transformer]",
            architecture: Architecture::FluxVaeDecoder,
        }
    );
    assert_eq!(
        missing.to_string(),
        "the model has no [transformer] (its architecture is \"flux-vae-decoder\")"
    );
    assert_eq!(cfg.text_tokens().unwrap_err().what, "shapes.text_tokens");
    let cfg = parse(TRANSFORMER).unwrap();
    assert_eq!(cfg.vae().unwrap_err().what, "[vae]");
    assert_eq!(cfg.text_tokens(), Ok(7));
}

#[test]
fn builders_refuse_the_other_architecture_without_panicking() {
    let vae_cfg = parse(VAE).unwrap();
    let err = flux::build_transformer(&vae_cfg).unwrap_err();
    assert!(matches!(err, IrError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("no [transformer]"), "{err}");

    let transformer_cfg = parse(TRANSFORMER).unwrap();
    let err = vae::build_vae_decoder(&transformer_cfg).unwrap_err();
    assert!(err.to_string().contains("no [vae]"), "{err}");

    // Fields edited after validation: still an error, not a panic.
    let mut broken = vae_cfg.clone();
    broken.vae.as_mut().unwrap().block_out_channels.clear();
    assert!(broken.validate().is_err());
    assert!(vae::build_vae_decoder(&broken).is_err());
}
