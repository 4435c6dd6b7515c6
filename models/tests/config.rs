//! Tests of model.toml loading: the presets, every validation rule, and the
//! locations and messages of parse, schema and I/O errors.

mod common;

use std::path::{Path, PathBuf};

use fluxc_models::config::{
    preset_path, presets_dir, Architecture, ConfigError, ModelConfig, ModelDType, Violation,
    PIPELINE_PRESETS, PRESETS,
};

/// A valid model.toml with every key spelled out, one per line, so that
/// tests can name the line of each key.
const BASE: &str = r#"[model]
name = "tiny"
architecture = "flux-transformer"
dtype = "f32"

[transformer]
patch_size = 1
in_channels = 16
out_channels = 16
num_layers = 2
num_single_layers = 2
attention_head_dim = 16
num_attention_heads = 2
hidden_size = 32
joint_attention_dim = 24
pooled_projection_dim = 12
guidance_embeds = false
axes_dims_rope = [4, 6, 6]
rope_theta = 10000.0
mlp_ratio = 4.0

[shapes]
batch = 1
height = 64
width = 48
text_tokens = 7
"#;

const ORIGIN: &str = "models/x.toml";

fn parse(source: &str) -> Result<ModelConfig, ConfigError> {
    ModelConfig::from_toml_str(source, Path::new(ORIGIN))
}

/// `BASE` with the line `key = ...` replaced by `key = value`.
fn with(key: &str, value: &str) -> String {
    common::with_line(BASE, key, value)
}

/// `BASE` with `old` (which must occur exactly once) replaced by `new`.
fn replace(old: &str, new: &str) -> String {
    assert_eq!(
        BASE.matches(old).count(),
        1,
        "`{old}` must occur once in BASE"
    );
    BASE.replace(old, new)
}

/// The 1-based line of `key = ...` in `BASE`.
fn line_of(key: &str) -> usize {
    common::line_starting(BASE, &format!("{key} = "))
}

/// Asserts that `source` fails validation on `field`, located at the start
/// of its key, with a message containing `needle`; returns the message.
fn assert_invalid(source: &str, field: &str, needle: &str) -> String {
    let key = field.rsplit('.').next().unwrap_or(field);
    match parse(source) {
        Err(ConfigError::Invalid {
            path,
            field: got_field,
            line,
            column,
            message,
        }) => {
            assert_eq!(path, PathBuf::from(ORIGIN));
            assert_eq!(got_field, field, "message: {message}");
            assert_eq!(line, Some(line_of(key)), "line of {field}");
            assert_eq!(column, Some(1), "column of {field}");
            assert!(
                message.contains(needle),
                "message for {field} should contain `{needle}`: {message}"
            );
            message
        }
        other => panic!("expected an Invalid error on {field}, got {other:?}"),
    }
}

/// Asserts that `source` fails to parse at `line`:`column` with a message
/// containing `needle`; returns the message.
fn assert_parse_error(source: &str, line: usize, column: usize, needle: &str) -> String {
    match parse(source) {
        Err(ConfigError::Parse {
            path,
            line: got_line,
            column: got_column,
            message,
        }) => {
            assert_eq!(path, PathBuf::from(ORIGIN));
            assert_eq!((got_line, got_column), (line, column), "message: {message}");
            assert!(
                message.contains(needle),
                "message should contain `{needle}`: {message}"
            );
            assert!(
                !message.contains('\n'),
                "message should be one line: {message:?}"
            );
            message
        }
        other => panic!("expected a Parse error, got {other:?}"),
    }
}

// --- presets ----------------------------------------------------------------

#[test]
fn every_preset_loads_and_validates() {
    for name in PRESETS {
        let path = preset_path(name);
        let config = ModelConfig::load(&path)
            .unwrap_or_else(|error| panic!("preset {name} should load: {error}"));
        assert_eq!(config.model.name, name, "name in {}", path.display());
        let architecture = if name.ends_with("-vae") {
            Architecture::FluxVaeDecoder
        } else {
            Architecture::FluxTransformer
        };
        assert_eq!(config.model.architecture, architecture, "{name}");
        assert_eq!(config.validate(), Ok(()));
    }
}

#[test]
fn presets_dir_holds_exactly_the_listed_presets() {
    let mut found: Vec<String> = std::fs::read_dir(presets_dir())
        .expect("presets dir is readable")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let is_preset = path.extension()? == "toml" && path.file_name()? != "Cargo.toml";
            is_preset.then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    found.sort();
    let mut listed: Vec<String> = PRESETS
        .iter()
        .chain(PIPELINE_PRESETS.iter())
        .map(|name| name.to_string())
        .collect();
    listed.sort();
    assert_eq!(found, listed);
}

fn load_preset(name: &str) -> ModelConfig {
    ModelConfig::load(&preset_path(name)).unwrap_or_else(|error| panic!("{error}"))
}

fn assert_real_flux(config: &ModelConfig) {
    let t = config.transformer().unwrap();
    assert_eq!(config.model.dtype, ModelDType::Bf16);
    assert_eq!(t.patch_size, 1);
    assert_eq!(t.in_channels, 64);
    assert_eq!(t.out_channels(), 64);
    assert_eq!((t.num_layers, t.num_single_layers), (19, 38));
    assert_eq!((t.num_attention_heads, t.attention_head_dim), (24, 128));
    assert_eq!(t.hidden_size, 3072);
    assert_eq!(t.joint_attention_dim, 4096);
    assert_eq!(t.pooled_projection_dim, 768);
    assert_eq!(t.axes_dims_rope, vec![16, 56, 56]);
    assert_eq!(t.rope_theta, 10000.0);
    assert_eq!(config.transformer().unwrap().mlp_hidden(), 12288);
    assert_eq!((config.shapes.height, config.shapes.width), (1024, 1024));
    assert_eq!(config.shapes.batch, 1);
    assert_eq!(config.image_tokens(), 4096);
}

#[test]
fn flux_schnell_preset_matches_the_release() {
    let config = load_preset("flux-schnell");
    assert_real_flux(&config);
    assert!(!config.transformer().unwrap().guidance_embeds);
    assert_eq!(config.shapes.text_tokens, Some(256));
}

#[test]
fn flux_dev_preset_matches_the_release() {
    let config = load_preset("flux-dev");
    assert_real_flux(&config);
    assert!(config.transformer().unwrap().guidance_embeds);
    assert_eq!(config.shapes.text_tokens, Some(512));
}

fn assert_tiny(config: &ModelConfig) {
    let t = config.transformer().unwrap();
    assert_eq!(config.model.dtype, ModelDType::F32);
    assert_eq!(t.patch_size, 1, "defaulted");
    assert_eq!((t.num_layers, t.num_single_layers), (2, 2));
    assert_eq!((t.num_attention_heads, t.attention_head_dim), (2, 16));
    assert_eq!(t.hidden_size, 32);
    assert_eq!(t.in_channels, 16);
    assert_eq!(t.out_channels, None);
    assert_eq!(t.out_channels(), 16);
    assert_eq!(t.joint_attention_dim, 24);
    assert_eq!(t.pooled_projection_dim, 12);
    assert_eq!(t.axes_dims_rope, vec![4, 6, 6]);
    assert_eq!(t.rope_theta, 10000.0, "defaulted");
    assert_eq!(t.mlp_ratio, 4.0, "defaulted");
    assert_eq!(config.transformer().unwrap().mlp_hidden(), 128);
    assert_eq!((config.shapes.height, config.shapes.width), (64, 48));
    assert_eq!(config.image_tokens(), 12);
    assert_eq!(config.shapes.text_tokens, Some(7));
    assert_eq!(config.shapes.batch, 1);
}

#[test]
fn tiny_schnell_preset_is_exact() {
    let config = load_preset("tiny-schnell");
    assert_tiny(&config);
    assert!(!config.transformer().unwrap().guidance_embeds);
}

#[test]
fn tiny_dev_preset_is_exact() {
    let config = load_preset("tiny-dev");
    assert_tiny(&config);
    assert!(config.transformer().unwrap().guidance_embeds);
}

// --- parsing and defaults ---------------------------------------------------

#[test]
fn base_parses() {
    let config = parse(BASE).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.model.name, "tiny");
    assert_eq!(config.transformer().unwrap().out_channels, Some(16));
}

#[test]
fn defaults_apply_to_omitted_keys() {
    let source = BASE
        .lines()
        .filter(|line| {
            ![
                "patch_size",
                "out_channels",
                "rope_theta",
                "mlp_ratio",
                "batch",
            ]
            .iter()
            .any(|key| line.starts_with(&format!("{key} = ")))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = parse(&source).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.transformer().unwrap().patch_size, 1);
    assert_eq!(config.transformer().unwrap().out_channels, None);
    assert_eq!(config.transformer().unwrap().rope_theta, 10000.0);
    assert_eq!(config.transformer().unwrap().mlp_ratio, 4.0);
    assert_eq!(config.shapes.batch, 1);
}

#[test]
fn integer_rope_theta_and_mlp_ratio_are_accepted() {
    let source = with("rope_theta", "10000");
    let config = parse(&source).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.transformer().unwrap().rope_theta, 10000.0);
    let source = with("mlp_ratio", "3");
    let config = parse(&source).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.transformer().unwrap().mlp_hidden(), 96);
}

#[test]
fn zero_layers_are_allowed() {
    let source = with("num_layers", "0").replace("num_single_layers = 2", "num_single_layers = 0");
    let config = parse(&source).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.transformer().unwrap().num_layers, 0);
    assert_eq!(config.transformer().unwrap().num_single_layers, 0);
}

// --- validation rules -------------------------------------------------------

#[test]
fn hidden_size_must_be_heads_times_head_dim() {
    let source = replace("attention_head_dim = 16", "attention_head_dim = 100")
        .replace("num_attention_heads = 2", "num_attention_heads = 24")
        .replace("hidden_size = 32", "hidden_size = 3072");
    let message = assert_invalid(&source, "transformer.hidden_size", "");
    assert_eq!(
        message,
        "num_attention_heads (24) × attention_head_dim (100) = 2400, but hidden_size is 3072"
    );
    let error = parse(&source).expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "models/x.toml:14:1: transformer.hidden_size: num_attention_heads (24) × \
         attention_head_dim (100) = 2400, but hidden_size is 3072"
    );
}

#[test]
fn zero_hidden_size_is_a_mismatch() {
    assert_invalid(
        &with("hidden_size", "0"),
        "transformer.hidden_size",
        "but hidden_size is 0",
    );
}

#[test]
fn hidden_size_overflow_does_not_panic() {
    let source = with("attention_head_dim", &u32::MAX.to_string()).replace(
        "num_attention_heads = 2",
        &format!("num_attention_heads = {}", u64::MAX / 2),
    );
    // Either rule may fire first; what matters is a clean error, no panic.
    assert!(matches!(parse(&source), Err(ConfigError::Invalid { .. })));
}

#[test]
fn axes_dims_rope_must_not_be_empty() {
    assert_invalid(
        &with("axes_dims_rope", "[]"),
        "transformer.axes_dims_rope",
        "at least one",
    );
}

#[test]
fn axes_dims_rope_entries_must_be_even() {
    let message = assert_invalid(
        &with("axes_dims_rope", "[4, 5, 7]"),
        "transformer.axes_dims_rope",
        "entry 1 is 5",
    );
    assert!(message.contains("even"), "{message}");
}

#[test]
fn axes_dims_rope_entries_must_be_positive() {
    let message = assert_invalid(
        &with("axes_dims_rope", "[0, 8, 8]"),
        "transformer.axes_dims_rope",
        "entry 0 is 0",
    );
    assert!(message.contains("positive"), "{message}");
}

#[test]
fn axes_dims_rope_must_sum_to_head_dim() {
    let message = assert_invalid(
        &with("axes_dims_rope", "[4, 6, 8]"),
        "transformer.axes_dims_rope",
        "sum to 18",
    );
    assert!(message.contains("attention_head_dim is 16"), "{message}");
}

#[test]
fn height_must_be_a_multiple_of_16() {
    let message = assert_invalid(
        &with("height", "60"),
        "shapes.height",
        "must be a multiple of 16 (VAE ×8 and 2×2 latent packing)",
    );
    assert!(message.contains("60"), "{message}");
}

#[test]
fn width_must_be_a_multiple_of_16() {
    assert_invalid(
        &with("width", "40"),
        "shapes.width",
        "must be a multiple of 16 (VAE ×8 and 2×2 latent packing)",
    );
}

#[test]
fn height_and_width_must_be_positive() {
    assert_invalid(&with("height", "0"), "shapes.height", "positive, got 0");
    assert_invalid(&with("width", "0"), "shapes.width", "positive, got 0");
}

#[test]
fn counts_and_widths_must_be_at_least_one() {
    let cases = [
        ("batch", "shapes.batch"),
        ("text_tokens", "shapes.text_tokens"),
        ("in_channels", "transformer.in_channels"),
        ("out_channels", "transformer.out_channels"),
        ("attention_head_dim", "transformer.attention_head_dim"),
        ("num_attention_heads", "transformer.num_attention_heads"),
        ("joint_attention_dim", "transformer.joint_attention_dim"),
        ("pooled_projection_dim", "transformer.pooled_projection_dim"),
    ];
    for (key, field) in cases {
        let message = assert_invalid(&with(key, "0"), field, "at least 1");
        assert_eq!(message, "must be at least 1, got 0");
    }
}

#[test]
fn patch_size_must_be_one() {
    let message = assert_invalid(
        &with("patch_size", "2"),
        "transformer.patch_size",
        "patch_size 2 is unsupported",
    );
    assert!(message.contains("packs 2×2 latent patches"), "{message}");
}

#[test]
fn mlp_ratio_must_be_positive() {
    assert_invalid(
        &with("mlp_ratio", "0.0"),
        "transformer.mlp_ratio",
        "must be positive and finite, got 0",
    );
    assert_invalid(
        &with("mlp_ratio", "-4.0"),
        "transformer.mlp_ratio",
        "must be positive and finite, got -4",
    );
    assert_invalid(
        &with("mlp_ratio", "inf"),
        "transformer.mlp_ratio",
        "must be positive and finite, got inf",
    );
}

#[test]
fn mlp_hidden_must_be_a_whole_number() {
    let message = assert_invalid(
        &with("mlp_ratio", "1.1"),
        "transformer.mlp_ratio",
        "hidden_size (32) × mlp_ratio (1.1)",
    );
    assert!(message.contains("not a whole number"), "{message}");
    // 32 × 2.5 = 80 is fine.
    assert!(parse(&with("mlp_ratio", "2.5")).is_ok());
}

#[test]
fn rope_theta_must_be_positive_and_finite() {
    for (value, shown) in [("0.0", "0"), ("-1.0", "-1"), ("nan", "NaN"), ("inf", "inf")] {
        assert_invalid(
            &with("rope_theta", value),
            "transformer.rope_theta",
            &format!("must be positive and finite, got {shown}"),
        );
    }
    // Too large for an f32: becomes infinite.
    assert_invalid(
        &with("rope_theta", "1e39"),
        "transformer.rope_theta",
        "got inf",
    );
}

#[test]
fn model_name_must_not_be_empty() {
    assert_invalid(&with("name", "\"\""), "model.name", "must not be empty");
    assert_invalid(&with("name", "\"  \""), "model.name", "must not be empty");
}

#[test]
fn validate_reports_the_field_without_a_file() {
    let mut config = parse(BASE).unwrap_or_else(|error| panic!("{error}"));
    config.shapes.text_tokens = Some(0);
    let violation = config.validate().expect_err("text_tokens 0 is invalid");
    assert_eq!(
        violation,
        Violation {
            field: "shapes.text_tokens".into(),
            message: "must be at least 1, got 0".into(),
        }
    );
    assert_eq!(
        violation.to_string(),
        "shapes.text_tokens: must be at least 1, got 0"
    );
}

// --- locations of semantic errors -------------------------------------------

#[test]
fn invalid_key_in_a_dotted_key_is_located() {
    let source = "\
[model]
name = \"tiny\"
architecture = \"flux-transformer\"
dtype = \"f32\"

[transformer]
in_channels = 16
num_layers = 2
num_single_layers = 2
attention_head_dim = 16
num_attention_heads = 2
hidden_size = 32
joint_attention_dim = 24
pooled_projection_dim = 12
guidance_embeds = false
axes_dims_rope = [4, 6, 6]
shapes.batch = 1
";
    // `shapes.batch` inside [transformer] is `transformer.shapes.batch`: unknown.
    let message = assert_parse_error(source, 17, 1, "unknown field `shapes`");
    assert!(message.contains("expected one of"), "{message}");

    let source = "\
shapes.batch = 1
shapes.height = 64
  shapes.width = 40
shapes.text_tokens = 7
model = { name = \"tiny\", architecture = \"flux-transformer\", dtype = \"f32\" }

[transformer]
in_channels = 16
num_layers = 2
num_single_layers = 2
attention_head_dim = 16
num_attention_heads = 2
hidden_size = 32
joint_attention_dim = 24
pooled_projection_dim = 12
guidance_embeds = false
axes_dims_rope = [4, 6, 6]
";
    let error = parse(source).expect_err("width 40 is invalid");
    match &error {
        ConfigError::Invalid {
            field,
            line,
            column,
            ..
        } => {
            assert_eq!(field, "shapes.width");
            // Points at `width` in `  shapes.width`.
            assert_eq!((*line, *column), (Some(3), Some(10)));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let empty_name = source.replace("name = \"tiny\"", "name = \"\"");
    let empty_name = empty_name.replace("width = 40", "width = 48");
    match parse(&empty_name) {
        Err(ConfigError::Invalid {
            field,
            line,
            column,
            ..
        }) => {
            assert_eq!(field, "model.name");
            // Points at `name` inside the inline table.
            assert_eq!((line, column), (Some(5), Some(11)));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn invalid_display_without_location_omits_it() {
    let error = ConfigError::Invalid {
        path: PathBuf::from("m.toml"),
        field: "transformer.rope_theta".into(),
        line: None,
        column: None,
        message: "must be positive and finite, got 0".into(),
    };
    assert_eq!(
        error.to_string(),
        "m.toml: transformer.rope_theta: must be positive and finite, got 0"
    );
}

// --- parse errors -----------------------------------------------------------

#[test]
fn malformed_toml_reports_line_and_column() {
    let line = line_of("width");
    let message = assert_parse_error(&with("width", "= 48"), line, 9, "");
    let error = parse(&with("width", "= 48")).expect_err("malformed");
    assert_eq!(error.to_string(), format!("{ORIGIN}:{line}:9: {message}"));
}

#[test]
fn unterminated_string_is_located() {
    // Reported where the closing quote was expected: the end of the line.
    let line = line_of("name");
    assert_parse_error(&with("name", "\"tiny"), line, 13, "expected `\"`");
}

#[test]
fn columns_count_characters_not_bytes() {
    // "ééé" is 6 bytes but 3 columns; the stray `x` is at column 14.
    let source = with("name", "\"ééé\" x");
    assert_parse_error(&source, line_of("name"), 14, "");
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let source = replace("num_layers = 2", "num_heads = 24\nnum_layers = 2");
    let message = assert_parse_error(
        &source,
        line_of("num_layers"),
        1,
        "unknown field `num_heads`",
    );
    assert!(
        message.contains("num_attention_heads"),
        "lists the valid keys: {message}"
    );
    let error = parse(&source).expect_err("unknown key");
    assert!(
        error.to_string().starts_with(&format!(
            "{ORIGIN}:{}:1: unknown field `num_heads`",
            line_of("num_layers")
        )),
        "{error}"
    );
}

#[test]
fn unknown_section_is_rejected() {
    let source = replace("[shapes]", "[shape]");
    assert_parse_error(&source, line_of("batch") - 1, 2, "unknown field `shape`");
}

#[test]
fn wrong_type_is_rejected() {
    let message = assert_parse_error(
        &with("num_layers", "\"19\""),
        line_of("num_layers"),
        14,
        "invalid type: string \"19\"",
    );
    assert!(message.contains("expected usize"), "{message}");
    assert_parse_error(
        &with("guidance_embeds", "1"),
        line_of("guidance_embeds"),
        19,
        "invalid type: integer `1`, expected a boolean",
    );
}

#[test]
fn negative_count_is_rejected() {
    assert_parse_error(
        &with("batch", "-1"),
        line_of("batch"),
        9,
        "invalid value: integer `-1`",
    );
}

#[test]
fn unknown_dtype_and_architecture_are_rejected() {
    assert_parse_error(
        &with("dtype", "\"f64\""),
        line_of("dtype"),
        9,
        "unknown variant `f64`, expected one of `f32`, `bf16`, `f16`",
    );
    assert_parse_error(
        &with("architecture", "\"unet\""),
        line_of("architecture"),
        16,
        "unknown variant `unet`, expected `flux-transformer` or `flux-vae-decoder`",
    );
}

#[test]
fn missing_key_is_reported_at_its_table() {
    let source = replace("hidden_size = 32\n", "");
    let table_line = BASE
        .lines()
        .position(|line| line == "[transformer]")
        .map(|index| index + 1)
        .expect("BASE has [transformer]");
    assert_parse_error(&source, table_line, 1, "missing field `hidden_size`");
}

#[test]
fn missing_section_is_reported() {
    let end_of_transformer = BASE.find("[shapes]").expect("BASE has [shapes]");
    let source = &BASE[..end_of_transformer];
    assert_parse_error(source, 1, 1, "missing field `shapes`");
    assert_parse_error("", 1, 1, "missing field `model`");
}

#[test]
fn duplicate_key_is_rejected() {
    let source = replace("num_layers = 2", "num_layers = 2\nnum_layers = 3");
    assert_parse_error(&source, line_of("num_layers") + 1, 1, "duplicate key");
}

// --- I/O ----------------------------------------------------------------------

#[test]
fn missing_file_gives_io_error_with_path() {
    let path = presets_dir().join("no-such-model.toml");
    match ModelConfig::load(&path) {
        Err(
            ref error @ ConfigError::Io {
                path: ref got,
                ref source,
            },
        ) => {
            assert_eq!(got, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            let shown = error.to_string();
            assert!(
                shown.starts_with(&format!("cannot read model file `{}`: ", path.display())),
                "{shown}"
            );
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn load_reports_errors_against_the_file_path() {
    let dir = std::env::temp_dir().join(format!("fluxc-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, with("height", "65")).expect("write temp file");
    let error = ModelConfig::load(&path).expect_err("height 65 is invalid");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        error.to_string(),
        format!(
            "{}:{}:1: shapes.height: must be a multiple of 16 (VAE ×8 and 2×2 latent packing) \
             and positive, got 65",
            path.display(),
            line_of("height")
        )
    );
}

// --- [passes] ----------------------------------------------------------------

#[test]
fn passes_default_to_all_on_with_fp8_off() {
    let options = parse(BASE).unwrap().passes.options();
    assert_eq!(options, fluxc_passes::PassOptions::default());
    assert_eq!(options.fp8, fluxc_passes::Fp8Mode::Off);
    assert!(options.cse && options.fuse_qkv && options.epilogue_fusion);
}

#[test]
fn passes_map_onto_pass_options() {
    let text = format!(
        "{BASE}\n[passes]\ncse = false\nepilogue_fusion = false\nfuse_qkv_min_rows = 4\n\
         fp8 = \"dynamic-row\"\nfp8_exclude = [\"*.proj_out\"]\nfp8_fast_accumulation = true\nfp8_min_rows = 1024\n\
         cudnn_convolutions = true\nresidual_in_gemm = false\n"
    );
    let options = parse(&text).unwrap().passes.options();
    assert!(!options.residual_in_gemm);
    assert!(!options.cse && !options.epilogue_fusion && options.simplify);
    assert!(options.fp8_fast_accumulation);
    assert!(options.cudnn_convolutions);
    assert_eq!(options.fp8_policy.min_rows, 1024);
    assert_eq!(options.fuse_qkv_min_rows, 4);
    assert_eq!(options.fp8, fluxc_passes::Fp8Mode::DynamicRow);
    assert_eq!(options.fp8_policy.exclude, vec!["*.proj_out".to_string()]);
    assert_eq!(
        options.fp8_policy.include,
        fluxc_passes::Fp8Policy::default().include,
        "an omitted list keeps its default"
    );
    assert!(
        options.fp8_policy.attention,
        "fp8 attention is on with fp8 unless switched off"
    );
    let no_attention = format!("{BASE}\n[passes]\nfp8 = \"dynamic-row\"\nfp8_attention = false\n");
    assert!(
        !parse(&no_attention)
            .unwrap()
            .passes
            .options()
            .fp8_policy
            .attention
    );
    let tensor = format!("{BASE}\n[passes]\nfp8 = \"dynamic-tensor\"\n");
    assert_eq!(
        parse(&tensor).unwrap().passes.options().fp8,
        fluxc_passes::Fp8Mode::DynamicTensor
    );
}

#[test]
fn fp8_attention_maps_onto_the_policy() {
    let on = format!("{BASE}\n[passes]\nfp8 = \"dynamic-row\"\nfp8_attention = true\n");
    let options = parse(&on).unwrap().passes.options();
    assert!(options.fp8_policy.attention);
    assert_eq!(options.fp8, fluxc_passes::Fp8Mode::DynamicRow);
    let off = format!("{BASE}\n[passes]\nfp8_attention = false\n");
    assert!(!parse(&off).unwrap().passes.options().fp8_policy.attention);
    let bad = format!("{BASE}\n[passes]\nfp8_attention = \"yes\"\n");
    let err = parse(&bad).unwrap_err().to_string();
    assert!(
        err.contains("fp8_attention") || err.contains("bool"),
        "{err}"
    );
}

#[test]
fn unknown_fp8_mode_and_unknown_pass_keys_are_rejected() {
    let bad_mode = format!("{BASE}\n[passes]\nfp8 = \"int4\"\n");
    let err = parse(&bad_mode).unwrap_err().to_string();
    assert!(err.contains("int4") && err.contains("dynamic-row"), "{err}");
    let bad_key = format!("{BASE}\n[passes]\nfuse_everything = true\n");
    let err = parse(&bad_key).unwrap_err().to_string();
    assert!(err.contains("fuse_everything"), "{err}");
}

#[test]
fn bad_fp8_glob_names_the_field_and_line() {
    let text = format!("{BASE}\n[passes]\nfp8_include = [\"blocks.[0\"]\n");
    let line = text.lines().count();
    match parse(&text).unwrap_err() {
        ConfigError::Invalid {
            field,
            line: at,
            message,
            ..
        } => {
            assert_eq!(field, "passes.fp8_include");
            assert_eq!(at, Some(line));
            assert!(message.contains("blocks.[0"), "{message}");
        }
        other => panic!("{other}"),
    }
}

// --- [autotune] --------------------------------------------------------------

#[test]
fn autotune_defaults_search_for_two_minutes_without_a_cache() {
    let a = parse(BASE).unwrap().autotune;
    assert!(a.coordinate_descent && a.check_all_directions);
    assert_eq!(a.budget_s, 120.0);
    assert_eq!(a.cache, None);
}

#[test]
fn autotune_keys_parse() {
    let text = format!(
        "{BASE}\n[autotune]\ncoordinate_descent = false\ncheck_all_directions = false\n\
         budget_s = 30\ncache = \"tuning/h200.json\"\n"
    );
    let a = parse(&text).unwrap().autotune;
    assert!(!a.coordinate_descent && !a.check_all_directions);
    assert_eq!(a.budget_s, 30.0, "an integer budget is taken as seconds");
    assert_eq!(
        a.cache_path(Path::new("/m/dev.toml")),
        Some(PathBuf::from("/m/tuning/h200.json"))
    );
    let fraction = format!("{BASE}\n[autotune]\nbudget_s = 0.5\n");
    assert_eq!(parse(&fraction).unwrap().autotune.budget_s, 0.5);
}

#[test]
fn bad_autotune_budgets_and_caches_name_the_key_and_line() {
    for (value, needle) in [("-5", "got -5"), ("0", "got 0"), ("nan", "got NaN")] {
        let text = format!("{BASE}\n[autotune]\nbudget_s = {value}\n");
        match parse(&text).unwrap_err() {
            ConfigError::Invalid {
                field,
                line,
                column,
                message,
                ..
            } => {
                assert_eq!(field, "autotune.budget_s");
                assert_eq!((line, column), (Some(text.lines().count()), Some(1)));
                assert!(
                    message.contains("positive") && message.contains(needle),
                    "{message}"
                );
            }
            other => panic!("budget_s = {value}: {other}"),
        }
    }
    let text = format!("{BASE}\n[autotune]\ncache = \"\"\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{ORIGIN}:{}:1: autotune.cache: must not be empty",
            text.lines().count()
        )),
        "{err}"
    );
}

#[test]
fn autotune_rejects_unknown_keys_and_wrong_types_where_they_are() {
    let typo = format!("{BASE}\n[autotune]\nbudget = 10\n");
    let line = typo.lines().count();
    assert_parse_error(&typo, line, 1, "unknown field `budget`");
    let err = parse(&typo).unwrap_err().to_string();
    assert!(
        err.contains("`budget_s`") && err.contains("`cache`"),
        "{err}"
    );
    let wrong = format!("{BASE}\n[autotune]\ncoordinate_descent = \"no\"\n");
    assert_parse_error(
        &wrong,
        line,
        22,
        "invalid type: string \"no\", expected a boolean",
    );
    let wrong = format!("{BASE}\n[autotune]\nbudget_s = \"2m\"\n");
    assert_parse_error(&wrong, line, 12, "invalid type: string \"2m\"");
    let wrong = format!("{BASE}\n[autotune]\ncache = 3\n");
    assert_parse_error(&wrong, line, 9, "invalid type: integer `3`");
}
