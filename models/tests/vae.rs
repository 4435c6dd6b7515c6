//! The FLUX VAE decoder builder and its checkpoints: the graph's inputs,
//! outputs and weight names for the presets, a CPU interpreter run with
//! random weights, and the same weights loading identically from diffusers'
//! layout and the original (`ae.safetensors`) layout, bundled or not, also
//! after the passes derived weights from them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use fluxc_artifact::WeightSource;
use fluxc_ir::interp::{self, Tensor};
use fluxc_ir::{DType, Graph, InputKind, Op};
use fluxc_models::checkpoint::{
    detect_format, load_derived_weights, load_weights, resolve_sources, CheckpointFormat, NameMap,
    VaeDims,
};
use fluxc_models::config::preset_path;
use fluxc_models::vae::build_vae_decoder;
use fluxc_models::{build_graph, ModelConfig};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tempfile::TempDir;

fn preset(name: &str) -> ModelConfig {
    ModelConfig::load(&preset_path(name)).unwrap_or_else(|e| panic!("{e}"))
}

/// The tiny preset with `[shapes]` or `[vae]` lines edited.
fn tiny_with(edits: &[(&str, &str)]) -> ModelConfig {
    let mut text = std::fs::read_to_string(preset_path("tiny-vae")).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "tiny-vae has no `{from}`");
        text = text.replace(from, to);
    }
    ModelConfig::from_toml_str(&text, Path::new("tiny-vae-edited.toml")).unwrap()
}

/// Name and shape of every weight input, in node order.
fn weights(graph: &Graph) -> Vec<(String, Vec<usize>)> {
    graph
        .inputs()
        .into_iter()
        .filter_map(|id| match &graph.node(id).op {
            Op::Input {
                name,
                kind: InputKind::Weight,
            } => Some((name.clone(), graph.ty(id).shape.dims().to_vec())),
            _ => None,
        })
        .collect()
}

/// Name and shape of every activation input.
fn activations(graph: &Graph) -> Vec<(String, Vec<usize>)> {
    graph
        .inputs()
        .into_iter()
        .filter_map(|id| match &graph.node(id).op {
            Op::Input {
                name,
                kind: InputKind::Activation,
            } => Some((name.clone(), graph.ty(id).shape.dims().to_vec())),
            _ => None,
        })
        .collect()
}

fn output_shape(graph: &Graph, name: &str) -> Vec<usize> {
    let (_, id) = graph
        .outputs()
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output {name}"));
    graph.ty(*id).shape.dims().to_vec()
}

fn count_ops(graph: &Graph, kind: &str) -> usize {
    fluxc_ir::GraphStats::of(graph).ops(kind)
}

// --- the graph ------------------------------------------------------------------

#[test]
fn tiny_vae_graph_has_the_diffusers_weights_and_nhwc_io() {
    let graph = build_vae_decoder(&preset("tiny-vae")).unwrap();
    assert_eq!(
        activations(&graph),
        vec![("z".to_string(), vec![1, 4, 4, 4])]
    );
    assert_eq!(output_shape(&graph, "sample"), vec![1, 32, 32, 3]);
    let w: BTreeMap<String, Vec<usize>> = weights(&graph).into_iter().collect();
    // conv_in, conv_norm_out, conv_out (6); 2 mid resnets (16), attention
    // (10); 4 up blocks × 2 resnets (64), 2 shortcuts (4), 3 upsamplers (6).
    assert_eq!(w.len(), 6 + 16 + 10 + 64 + 4 + 6);
    for (name, shape) in [
        ("decoder.conv_in.weight", vec![32, 4, 3, 3]),
        ("decoder.mid_block.resnets.0.norm1.weight", vec![32]),
        ("decoder.mid_block.resnets.1.conv2.bias", vec![32]),
        ("decoder.mid_block.attentions.0.group_norm.bias", vec![32]),
        ("decoder.mid_block.attentions.0.to_q.weight", vec![32, 32]),
        (
            "decoder.mid_block.attentions.0.to_out.0.weight",
            vec![32, 32],
        ),
        (
            "decoder.up_blocks.0.resnets.1.conv1.weight",
            vec![32, 32, 3, 3],
        ),
        (
            "decoder.up_blocks.0.upsamplers.0.conv.weight",
            vec![32, 32, 3, 3],
        ),
        ("decoder.up_blocks.2.resnets.0.norm1.weight", vec![32]),
        (
            "decoder.up_blocks.2.resnets.0.conv1.weight",
            vec![16, 32, 3, 3],
        ),
        (
            "decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
            vec![16, 32, 1, 1],
        ),
        ("decoder.up_blocks.3.resnets.0.conv_shortcut.bias", vec![8]),
        ("decoder.up_blocks.3.resnets.1.norm2.weight", vec![8]),
        ("decoder.conv_norm_out.weight", vec![8]),
        ("decoder.conv_out.weight", vec![3, 8, 3, 3]),
        ("decoder.conv_out.bias", vec![3]),
    ] {
        assert_eq!(w.get(name), Some(&shape), "{name}");
    }
    for absent in [
        "decoder.up_blocks.3.upsamplers.0.conv.weight",
        "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
        "decoder.up_blocks.0.resnets.2.conv1.weight",
        "post_quant_conv.weight",
    ] {
        assert!(!w.contains_key(absent), "{absent}");
    }
    assert_eq!(count_ops(&graph, "attention"), 1);
    assert_eq!(count_ops(&graph, "upsample_nearest"), 3);
    assert_eq!(count_ops(&graph, "group_norm"), 5 + 16 + 1);
}

#[test]
fn shapes_follow_the_config() {
    let graph = build_graph(&tiny_with(&[
        ("height = 32", "height = 48"),
        ("batch = 1", "batch = 2"),
    ]))
    .unwrap();
    assert_eq!(
        activations(&graph),
        vec![("z".to_string(), vec![2, 6, 4, 4])]
    );
    assert_eq!(output_shape(&graph, "sample"), vec![2, 48, 32, 3]);

    let graph = build_graph(&tiny_with(&[("out_channels = 3", "out_channels = 5")])).unwrap();
    assert_eq!(output_shape(&graph, "sample"), vec![1, 32, 32, 5]);
}

#[test]
fn mid_attention_can_be_left_out() {
    let cfg = tiny_with(&[(
        "scaling_factor",
        "mid_block_add_attention = false\nscaling_factor",
    )]);
    let graph = build_vae_decoder(&cfg).unwrap();
    assert_eq!(count_ops(&graph, "attention"), 0);
    assert!(weights(&graph)
        .iter()
        .all(|(n, _)| !n.contains("attentions")));
    assert_eq!(count_ops(&graph, "conv2d"), 27);
}

#[test]
fn flux_vae_graph_builds_at_full_size() {
    let cfg = preset("flux-vae");
    let graph = build_graph(&cfg).unwrap();
    assert_eq!(
        activations(&graph),
        vec![("z".to_string(), vec![1, 128, 128, 16])]
    );
    assert_eq!(output_shape(&graph, "sample"), vec![1, 1024, 1024, 3]);
    assert_eq!(graph.ty(graph.inputs()[0]).dtype, DType::BF16);
    assert_eq!(weights(&graph).len(), 138);
    assert_eq!(count_ops(&graph, "conv2d"), 35);
    // The original layout has a counterpart for every weight.
    let map = NameMap::of(&cfg).unwrap();
    assert_eq!(map, NameMap::VaeDecoder(VaeDims::FLUX1));
    let sources = resolve_sources(&graph, CheckpointFormat::Bfl, map).unwrap();
    assert_eq!(sources.len(), 138);
    assert_eq!(
        sources["decoder.up_blocks.0.resnets.2.conv2.weight"],
        WeightSource::tensor("decoder.up.3.block.2.conv2.weight")
    );
}

// --- random weights -----------------------------------------------------------

/// Deterministic pseudo-random values in [-1, 1).
fn values(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Random weights that keep activations O(1): fan-in-scaled matrices and
/// kernels, norm scales near 1, small biases.
fn random_weights(graph: &Graph) -> BTreeMap<String, Tensor> {
    let mut seed = 7;
    weights(graph)
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let raw = values(&mut seed, n);
            let data = if shape.len() >= 2 {
                let fan_in: usize = shape[1..].iter().product();
                let scale = (3.0 / fan_in as f32).sqrt();
                raw.iter().map(|v| v * scale).collect()
            } else if name.contains("norm") && name.ends_with("weight") {
                raw.iter().map(|v| 1.0 + 0.2 * v).collect()
            } else {
                raw.iter().map(|v| 0.2 * v).collect()
            };
            (name, Tensor::new(shape, data).unwrap())
        })
        .collect()
}

#[test]
fn interpreter_runs_the_tiny_vae() {
    let graph = build_vae_decoder(&preset("tiny-vae")).unwrap();
    let mut inputs: HashMap<String, Tensor> = random_weights(&graph).into_iter().collect();
    let mut seed = 99;
    inputs.insert(
        "z".into(),
        Tensor::new([1, 4, 4, 4], values(&mut seed, 64)).unwrap(),
    );
    let outputs = interp::run(&graph, &inputs).unwrap();
    let sample = &outputs["sample"];
    assert_eq!(sample.shape.dims(), &[1, 32, 32, 3]);
    assert!(sample.data.iter().all(|v| v.is_finite()));
    let mean = sample.data.iter().map(|&v| v as f64).sum::<f64>() / sample.data.len() as f64;
    let var = sample
        .data
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / sample.data.len() as f64;
    assert!(var > 1e-4, "the output should vary, variance {var}");
}

// --- checkpoints ------------------------------------------------------------------

/// The original (LDM / `ae.safetensors`) name of diffusers decoder weight
/// `name` for a VAE of `levels` levels, written independently of the
/// loader's map (string rewriting, as diffusers' converter does it forwards).
fn original_name(name: &str, levels: usize) -> String {
    let mut s = name.to_string();
    for (d, o) in [
        ("conv_norm_out", "norm_out"),
        ("conv_shortcut", "nin_shortcut"),
        ("mid_block.resnets.0", "mid.block_1"),
        ("mid_block.resnets.1", "mid.block_2"),
        ("mid_block.attentions.0.group_norm", "mid.attn_1.norm"),
        ("mid_block.attentions.0.to_out.0", "mid.attn_1.proj_out"),
        ("mid_block.attentions.0.to_q", "mid.attn_1.q"),
        ("mid_block.attentions.0.to_k", "mid.attn_1.k"),
        ("mid_block.attentions.0.to_v", "mid.attn_1.v"),
        ("upsamplers.0", "upsample"),
    ] {
        s = s.replace(d, o);
    }
    for i in 0..levels {
        let o = levels - 1 - i;
        s = s.replace(
            &format!("up_blocks.{i}.resnets."),
            &format!("up.{o}.block."),
        );
        s = s.replace(
            &format!("up_blocks.{i}.upsample."),
            &format!("up.{o}.upsample."),
        );
    }
    s
}

/// The weights in the original layout: renamed, attention projections as
/// 1×1 convolutions `[C, C, 1, 1]`, plus an encoder tensor nobody reads.
fn to_original(weights: &BTreeMap<String, Tensor>, levels: usize) -> BTreeMap<String, Tensor> {
    let mut out: BTreeMap<String, Tensor> = weights
        .iter()
        .map(|(name, t)| {
            let mut t = t.clone();
            if name.contains("attentions.0.to_") && name.ends_with(".weight") {
                let d = t.shape.dims().to_vec();
                t = Tensor::new([d[0], d[1], 1, 1], t.data).unwrap();
            }
            (original_name(name, levels), t)
        })
        .collect();
    out.insert(
        "encoder.down.0.block.0.conv1.weight".into(),
        Tensor::new([2, 3], vec![0.0; 6]).unwrap(),
    );
    out
}

fn write(path: &Path, tensors: &BTreeMap<String, Tensor>, prefix: &str) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let data = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (format!("{prefix}{n}"), t.shape.dims().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn original_names_match_the_loaders_map() {
    let cfg = preset("flux-vae");
    let graph = build_vae_decoder(&cfg).unwrap();
    let sources =
        resolve_sources(&graph, CheckpointFormat::Bfl, NameMap::of(&cfg).unwrap()).unwrap();
    for (name, source) in sources {
        assert_eq!(
            source.tensor_names(),
            vec![original_name(&name, 4).as_str()],
            "{name}"
        );
    }
}

#[test]
fn every_layout_loads_the_same_vae_weights() {
    let cfg = preset("tiny-vae");
    let map = NameMap::of(&cfg).unwrap();
    let graph = build_vae_decoder(&cfg).unwrap();
    let reference = random_weights(&graph);
    let original = to_original(&reference, 4);
    let tmp = TempDir::new().unwrap();
    let vae_dir = tmp.path().join("vae");
    std::fs::create_dir_all(&vae_dir).unwrap();
    write(
        &vae_dir.join("diffusion_pytorch_model.safetensors"),
        &reference,
        "",
    );
    let ae = tmp.path().join("ae.safetensors");
    write(&ae, &original, "");
    let bundled = tmp.path().join("bundle.safetensors");
    write(&bundled, &original, "vae.");
    let ldm = tmp.path().join("ldm.safetensors");
    write(&ldm, &original, "first_stage_model.");

    let want: HashMap<String, Tensor> = reference.into_iter().collect();
    for (path, format) in [
        (&vae_dir, CheckpointFormat::Diffusers),
        (&ae, CheckpointFormat::Bfl),
        (&bundled, CheckpointFormat::Bfl),
        (&ldm, CheckpointFormat::Bfl),
    ] {
        assert_eq!(detect_format(path).unwrap(), format, "{}", path.display());
        let got = load_weights(&graph, path, map).unwrap();
        assert_eq!(got, want, "{}", path.display());
    }
}

#[test]
fn optimized_vae_weights_derive_from_the_original_layout() {
    let cfg = preset("tiny-vae");
    let map = NameMap::of(&cfg).unwrap();
    let graph = build_vae_decoder(&cfg).unwrap();
    let reference = random_weights(&graph);
    let tmp = TempDir::new().unwrap();
    let diffusers = tmp.path().join("diffusion_pytorch_model.safetensors");
    write(&diffusers, &reference, "");
    let ae = tmp.path().join("ae.safetensors");
    write(&ae, &to_original(&reference, 4), "");

    let optimized = fluxc_passes::pipeline::optimize(graph, &cfg.passes.options()).unwrap();
    // conv1x1_as_mm reshapes the shortcuts, fuse_qkv stacks q, k and v.
    assert!(
        optimized.weights.len() >= 4,
        "{:?}",
        optimized.weights.keys()
    );
    let from_diffusers =
        load_derived_weights(&optimized.graph, &optimized.weights, &diffusers, map).unwrap();
    let from_ae = load_derived_weights(&optimized.graph, &optimized.weights, &ae, map).unwrap();
    assert_eq!(from_diffusers, from_ae);
}
