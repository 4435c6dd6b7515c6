//! Checkpoint loading end to end: the same weights written in every layout
//! (sharded and single-file diffusers, BFL with and without the bundle
//! prefix, pipeline root) load to identical tensors; stored BF16/F16 convert
//! exactly; broken checkpoints give errors that name what is wrong.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use fluxc_artifact::WeightSource;
use fluxc_ir::interp::Tensor;
use fluxc_ir::{DType, Graph, GraphBuilder, Shape};
use fluxc_models::checkpoint::{
    detect_format, load_weights, resolve_sources, BflDims, Checkpoint, CheckpointError,
    CheckpointFormat,
};
use fluxc_models::config::preset_path;
use fluxc_models::flux::build_transformer;
use fluxc_models::ModelConfig;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tempfile::TempDir;

/// Model width of the toy transformer.
const H: usize = 8;
/// MLP width of its single blocks.
const M: usize = 16;
/// Its attention head dim (the RMSNorm scales' length).
const D: usize = 4;
const DIMS: BflDims = BflDims {
    hidden_size: H,
    mlp_hidden: M,
};

/// The toy graph's weights: diffusers name and shape.
fn weight_specs() -> Vec<(String, Vec<usize>)> {
    let mut specs = vec![
        ("x_embedder.weight".to_string(), vec![H, 4]),
        ("x_embedder.bias".to_string(), vec![H]),
        (
            "transformer_blocks.0.attn.norm_q.weight".to_string(),
            vec![D],
        ),
        (
            "single_transformer_blocks.0.attn.norm_k.weight".to_string(),
            vec![D],
        ),
        (
            "single_transformer_blocks.0.proj_mlp.weight".to_string(),
            vec![M, H],
        ),
        (
            "single_transformer_blocks.0.proj_mlp.bias".to_string(),
            vec![M],
        ),
        ("norm_out.linear.weight".to_string(), vec![2 * H, H]),
        ("norm_out.linear.bias".to_string(), vec![2 * H]),
    ];
    for p in [
        "to_q",
        "to_k",
        "to_v",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
    ] {
        specs.push((format!("transformer_blocks.0.attn.{p}.weight"), vec![H, H]));
        specs.push((format!("transformer_blocks.0.attn.{p}.bias"), vec![H]));
    }
    for p in ["to_q", "to_k", "to_v"] {
        specs.push((
            format!("single_transformer_blocks.0.attn.{p}.weight"),
            vec![H, H],
        ));
        specs.push((
            format!("single_transformer_blocks.0.attn.{p}.bias"),
            vec![H],
        ));
    }
    specs
}

/// A graph whose outputs are its weights (in `dtype`), plus one activation.
fn graph_with(specs: &[(String, Vec<usize>)], dtype: DType) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("hidden_states", DType::F32, [1, H]).unwrap();
    b.output("hidden_states", x).unwrap();
    for (name, shape) in specs {
        let w = b.weight(name, dtype, shape.clone()).unwrap();
        b.output(name, w).unwrap();
    }
    b.finish().unwrap()
}

fn graph(dtype: DType) -> Graph {
    graph_with(&weight_specs(), dtype)
}

/// Deterministic pseudo-random values in [-1, 1), rounded by `round`.
fn values(seed: &mut u64, n: usize, round: impl Fn(f32) -> f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            round(((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

/// Named tensors to write: name → (shape, values).
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Random diffusers-layout weights for the toy graph.
fn reference(round: impl Fn(f32) -> f32) -> Tensors {
    let mut seed = 42;
    weight_specs()
        .into_iter()
        .map(|(name, shape)| {
            let v = values(&mut seed, shape.iter().product(), &round);
            (name, (shape, v))
        })
        .collect()
}

/// Stacks tensors along dim 0.
fn cat(parts: &[&(Vec<usize>, Vec<f32>)]) -> (Vec<usize>, Vec<f32>) {
    let mut shape = parts[0].0.clone();
    shape[0] = parts.iter().map(|p| p.0[0]).sum();
    let data = parts.iter().flat_map(|p| p.1.iter().copied()).collect();
    (shape, data)
}

/// The same weights in the original BFL layout, written independently of
/// the loader's name map: fused qkv and linear1, shift-then-scale modulation.
fn to_bfl(d: &Tensors) -> Tensors {
    let mut b = Tensors::new();
    let g = |n: &str| &d[n];
    for p in ["weight", "bias"] {
        b.insert(format!("img_in.{p}"), g(&format!("x_embedder.{p}")).clone());
        let dq = |s: &str| g(&format!("transformer_blocks.0.attn.{s}.{p}"));
        b.insert(
            format!("double_blocks.0.img_attn.qkv.{p}"),
            cat(&[dq("to_q"), dq("to_k"), dq("to_v")]),
        );
        b.insert(
            format!("double_blocks.0.txt_attn.qkv.{p}"),
            cat(&[dq("add_q_proj"), dq("add_k_proj"), dq("add_v_proj")]),
        );
        let sq = |s: &str| g(&format!("single_transformer_blocks.0.{s}.{p}"));
        b.insert(
            format!("single_blocks.0.linear1.{p}"),
            cat(&[
                sq("attn.to_q"),
                sq("attn.to_k"),
                sq("attn.to_v"),
                sq("proj_mlp"),
            ]),
        );
        let (shape, data) = g(&format!("norm_out.linear.{p}"));
        let half = data.len() / 2;
        let swapped = [&data[half..], &data[..half]].concat();
        b.insert(
            format!("final_layer.adaLN_modulation.1.{p}"),
            (shape.clone(), swapped),
        );
    }
    b.insert(
        "double_blocks.0.img_attn.norm.query_norm.scale".into(),
        g("transformer_blocks.0.attn.norm_q.weight").clone(),
    );
    b.insert(
        "single_blocks.0.norm.key_norm.scale".into(),
        g("single_transformer_blocks.0.attn.norm_k.weight").clone(),
    );
    b
}

fn with_prefix(t: &Tensors, prefix: &str) -> Tensors {
    t.iter()
        .map(|(n, v)| (format!("{prefix}{n}"), v.clone()))
        .collect()
}

/// Little-endian bytes of `data` as `dtype` (F32, BF16 or F16).
fn encode(data: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => data
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        Dtype::F16 => data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        other => panic!("test cannot encode {other}"),
    }
}

/// Writes raw tensors (dtype, shape, bytes) as a safetensors file.
fn write_raw(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, dt, s, bytes)| (n.clone(), TensorView::new(*dt, s.clone(), bytes).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Writes `tensors` as a safetensors file storing every tensor as `dtype`.
fn write(path: &Path, tensors: &Tensors, dtype: Dtype) {
    let raw: Vec<_> = tensors
        .iter()
        .map(|(n, (s, v))| (n.clone(), dtype, s.clone(), encode(v, dtype)))
        .collect();
    write_raw(path, &raw);
}

/// Writes `tensors` into `dir` as a diffusers checkpoint sharded over two
/// files with an index.
fn write_sharded(dir: &Path, tensors: &Tensors) {
    std::fs::create_dir_all(dir).unwrap();
    let mut shards = [Tensors::new(), Tensors::new()];
    let mut weight_map = BTreeMap::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let file = format!(
            "diffusion_pytorch_model-0000{}-of-00002.safetensors",
            i % 2 + 1
        );
        shards[i % 2].insert(name.clone(), t.clone());
        weight_map.insert(name.clone(), file);
    }
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        write(&dir.join(file), shard, Dtype::F32);
    }
    let index = serde_json::json!({
        "metadata": { "total_size": 0 },
        "weight_map": weight_map,
    });
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
}

/// The reference weights as the tensors `load_weights` should return.
fn expected(t: &Tensors) -> HashMap<String, Tensor> {
    t.iter()
        .map(|(n, (s, v))| (n.clone(), Tensor::new(s.clone(), v.clone()).unwrap()))
        .collect()
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    match load_weights(&graph(DType::BF16), path, DIMS) {
        Ok(w) => w,
        Err(e) => panic!("loading {}: {e}", path.display()),
    }
}

fn load_err(graph: &Graph, path: &Path) -> String {
    match load_weights(graph, path, DIMS) {
        Ok(_) => panic!("loading {} should fail", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{msg}` should mention `{p}`");
    }
}

#[test]
fn every_layout_loads_the_same_weights() {
    let reference = reference(|v| v);
    let bfl = to_bfl(&reference);
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();

    let sharded = root.join("sharded");
    write_sharded(&sharded, &reference);
    let single_dir = root.join("single");
    std::fs::create_dir_all(&single_dir).unwrap();
    let single_file = single_dir.join("diffusion_pytorch_model.safetensors");
    write(&single_file, &reference, Dtype::F32);
    let pipeline = root.join("pipeline");
    write_sharded(&pipeline.join("transformer"), &reference);
    let bfl_file = root.join("flux1-toy.safetensors");
    write(&bfl_file, &bfl, Dtype::F32);
    let bundle_file = root.join("bundle.safetensors");
    let mut bundle = with_prefix(&bfl, "model.diffusion_model.");
    bundle.insert(
        "first_stage_model.decoder.conv_in.weight".into(),
        (vec![2], vec![0.5, 0.25]),
    );
    write(&bundle_file, &bundle, Dtype::F32);

    let cases: [(&Path, CheckpointFormat); 8] = [
        (&sharded, CheckpointFormat::Diffusers),
        (
            &sharded.join("diffusion_pytorch_model.safetensors.index.json"),
            CheckpointFormat::Diffusers,
        ),
        (&single_dir, CheckpointFormat::Diffusers),
        (&single_file, CheckpointFormat::Diffusers),
        (&pipeline, CheckpointFormat::Diffusers),
        (
            &root.join("pipeline/transformer"),
            CheckpointFormat::Diffusers,
        ),
        (&bfl_file, CheckpointFormat::Bfl),
        (&bundle_file, CheckpointFormat::Bfl),
    ];
    let want = expected(&reference);
    for (path, format) in cases {
        assert_eq!(detect_format(path).unwrap(), format, "{}", path.display());
        assert_eq!(load(path), want, "{}", path.display());
    }
}

#[test]
fn bfl_names_without_the_prefix_win_over_prefixed_copies() {
    let reference = reference(|v| v);
    let mut bfl = to_bfl(&reference);
    // A stale prefixed copy of one tensor must not shadow the plain one.
    let stale = (vec![H, 4], vec![9.0; H * 4]);
    bfl.insert("model.diffusion_model.img_in.weight".into(), stale);
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("flux.safetensors");
    write(&path, &bfl, Dtype::F32);
    assert_eq!(load(&path), expected(&reference));
}

#[test]
fn resolves_sources_per_format() {
    let g = graph(DType::BF16);
    let diffusers = resolve_sources(&g, CheckpointFormat::Diffusers, DIMS).unwrap();
    assert_eq!(diffusers.len(), weight_specs().len());
    assert!(!diffusers.contains_key("hidden_states"));
    for (name, source) in &diffusers {
        assert_eq!(source, &WeightSource::tensor(name.as_str()));
    }
    let bfl = resolve_sources(&g, CheckpointFormat::Bfl, DIMS).unwrap();
    assert_eq!(
        bfl["transformer_blocks.0.attn.to_v.weight"],
        WeightSource::tensor("double_blocks.0.img_attn.qkv.weight").rows(2 * H, H)
    );
    assert_eq!(
        bfl["single_transformer_blocks.0.proj_mlp.bias"],
        WeightSource::tensor("single_blocks.0.linear1.bias").rows(3 * H, M)
    );
    assert_eq!(
        bfl["norm_out.linear.weight"],
        WeightSource::tensor("final_layer.adaLN_modulation.1.weight").swap_halves()
    );
    let odd = graph_with(&[("pos_embed.weight".into(), vec![2])], DType::F32);
    let err = resolve_sources(&odd, CheckpointFormat::Bfl, DIMS).unwrap_err();
    assert!(
        matches!(err, CheckpointError::UnmappedWeight { .. }),
        "{err}"
    );
    assert_contains(&err.to_string(), &["pos_embed.weight"]);
}

#[test]
fn half_precision_tensors_convert_exactly() {
    let bf16 = |v: f32| half::bf16::from_f32(v).to_f32();
    let f16 = |v: f32| half::f16::from_f32(v).to_f32();
    let tmp = TempDir::new().unwrap();
    for (dtype, round) in [
        (Dtype::BF16, &bf16 as &dyn Fn(f32) -> f32),
        (Dtype::F16, &f16),
    ] {
        let reference = reference(round);
        let want = expected(&reference);
        let diffusers = tmp.path().join(format!("diffusers-{dtype}.safetensors"));
        write(&diffusers, &reference, dtype);
        let bfl = tmp.path().join(format!("bfl-{dtype}.safetensors"));
        write(&bfl, &to_bfl(&reference), dtype);
        for path in [&diffusers, &bfl] {
            // The graph's dtype does not have to match the stored one.
            for graph_dtype in [DType::BF16, DType::F16, DType::F32] {
                let got = load_weights(&graph(graph_dtype), path, DIMS).unwrap();
                assert_eq!(got, want, "{dtype} stored, {graph_dtype} in the graph");
            }
        }
    }
}

#[test]
fn mixed_stored_dtypes_load() {
    let mut want = HashMap::new();
    let raw: Vec<_> = reference(|v| v)
        .into_iter()
        .enumerate()
        .map(|(i, (n, (s, v)))| {
            let dt = [Dtype::F32, Dtype::BF16, Dtype::F16][i % 3];
            let rounded: Vec<f32> = match dt {
                Dtype::BF16 => v
                    .iter()
                    .map(|&x| half::bf16::from_f32(x).to_f32())
                    .collect(),
                Dtype::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
                _ => v.clone(),
            };
            want.insert(n.clone(), Tensor::new(s.clone(), rounded).unwrap());
            (n, dt, s, encode(&v, dt))
        })
        .collect();
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("mixed.safetensors");
    write_raw(&path, &raw);
    assert_eq!(load(&path), want);
}

/// Writes `tensors` as a diffusers single file and returns its path.
fn single(tmp: &TempDir, tensors: &Tensors) -> PathBuf {
    let path = tmp.path().join("model.safetensors");
    write(&path, tensors, Dtype::F32);
    path
}

#[test]
fn missing_tensor_names_weight_and_checkpoint_tensor() {
    let tmp = TempDir::new().unwrap();
    let mut reference = reference(|v| v);
    reference.remove("transformer_blocks.0.attn.to_k.bias");
    let path = single(&tmp, &reference);
    let msg = load_err(&graph(DType::BF16), &path);
    assert_contains(
        &msg,
        &["transformer_blocks.0.attn.to_k.bias", "model.safetensors"],
    );

    let mut bfl = to_bfl(&reference_full());
    bfl.remove("double_blocks.0.img_attn.qkv.weight");
    let bfl_path = tmp.path().join("flux.safetensors");
    write(&bfl_path, &bfl, Dtype::F32);
    let msg = load_err(&graph(DType::BF16), &bfl_path);
    assert_contains(
        &msg,
        &[
            "transformer_blocks.0.attn.to_q.weight",
            "double_blocks.0.img_attn.qkv.weight",
            "flux.safetensors",
        ],
    );
}

fn reference_full() -> Tensors {
    reference(|v| v)
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let tmp = TempDir::new().unwrap();
    let mut reference = reference_full();
    reference.insert(
        "transformer_blocks.0.attn.to_q.weight".into(),
        (vec![H, 4], vec![0.0; H * 4]),
    );
    let path = single(&tmp, &reference);
    let err = load_weights(&graph(DType::BF16), &path, DIMS).unwrap_err();
    assert!(
        matches!(err, CheckpointError::ShapeMismatch { .. }),
        "{err}"
    );
    assert_contains(
        &err.to_string(),
        &["transformer_blocks.0.attn.to_q.weight", "[8,8]", "[8,4]"],
    );
}

#[test]
fn wrong_bfl_shapes_are_caught_after_derivation() {
    let tmp = TempDir::new().unwrap();
    let mut bfl = to_bfl(&reference_full());
    // A qkv with only two thirds: v's rows are out of range.
    bfl.insert(
        "double_blocks.0.img_attn.qkv.weight".into(),
        (vec![2 * H, H], vec![0.0; 2 * H * H]),
    );
    let path = tmp.path().join("flux.safetensors");
    write(&path, &bfl, Dtype::F32);
    let err = load_weights(&graph(DType::BF16), &path, DIMS).unwrap_err();
    assert!(matches!(err, CheckpointError::Derive { .. }), "{err}");
    assert_contains(
        &err.to_string(),
        &[
            "transformer_blocks.0.attn.to_v.weight",
            "double_blocks.0.img_attn.qkv.weight",
            "rows 16..24 are out of range",
        ],
    );

    // A final modulation of the wrong width: derived shape mismatch.
    let mut bfl = to_bfl(&reference_full());
    bfl.insert(
        "final_layer.adaLN_modulation.1.bias".into(),
        (vec![4 * H], vec![0.0; 4 * H]),
    );
    write(&path, &bfl, Dtype::F32);
    let msg = load_err(&graph(DType::BF16), &path);
    assert_contains(
        &msg,
        &[
            "norm_out.linear.bias",
            "[16]",
            "[32]",
            "final_layer.adaLN_modulation.1.bias",
        ],
    );
}

#[test]
fn unsupported_stored_dtype_is_named() {
    let tmp = TempDir::new().unwrap();
    let reference = reference_full();
    let raw: Vec<_> = reference
        .iter()
        .map(|(n, (s, v))| {
            if n == "x_embedder.bias" {
                let ints: Vec<u8> = v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect();
                (n.clone(), Dtype::I32, s.clone(), ints)
            } else {
                (n.clone(), Dtype::F32, s.clone(), encode(v, Dtype::F32))
            }
        })
        .collect();
    let path = tmp.path().join("ints.safetensors");
    write_raw(&path, &raw);
    let msg = load_err(&graph(DType::BF16), &path);
    assert_contains(&msg, &["x_embedder.bias", "I32", "ints.safetensors"]);
}

#[test]
fn truncated_and_empty_files_are_rejected() {
    let tmp = TempDir::new().unwrap();
    let path = single(&tmp, &reference_full());
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);
    let err = load_weights(&graph(DType::BF16), &path, DIMS).unwrap_err();
    assert!(matches!(err, CheckpointError::Safetensors { .. }), "{err}");
    assert_contains(&err.to_string(), &["model.safetensors"]);

    // Cut inside the header, and down to nothing.
    for keep in [20, 4, 0] {
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(keep).unwrap();
        drop(file);
        let msg = load_err(&graph(DType::BF16), &path);
        assert_contains(&msg, &["model.safetensors", "not a valid safetensors file"]);
    }

    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\xffgarbage").unwrap();
    let msg = load_err(&graph(DType::BF16), &path);
    assert_contains(&msg, &["model.safetensors"]);
}

/// A sharded checkpoint in a fresh directory, and its index path.
fn sharded(tmp: &TempDir) -> (PathBuf, PathBuf) {
    let dir = tmp.path().join("transformer");
    write_sharded(&dir, &reference_full());
    let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
    (dir, index)
}

#[test]
fn bad_index_files_are_named() {
    let tmp = TempDir::new().unwrap();
    let (dir, index) = sharded(&tmp);
    let g = graph(DType::BF16);

    std::fs::write(&index, "{ this is not json").unwrap();
    let err = load_weights(&g, &dir, DIMS).unwrap_err();
    assert!(matches!(err, CheckpointError::BadIndex { .. }), "{err}");
    assert_contains(&err.to_string(), &["index.json"]);

    std::fs::write(&index, r#"{"metadata": {}}"#).unwrap();
    assert_contains(&load_err(&g, &dir), &["index.json", "weight_map"]);

    std::fs::write(&index, r#"{"weight_map": {"a": 3}}"#).unwrap();
    assert_contains(&load_err(&g, &dir), &["index.json"]);

    std::fs::write(&index, r#"[1, 2]"#).unwrap();
    assert_contains(&load_err(&g, &dir), &["index.json"]);
}

#[test]
fn index_naming_a_missing_shard_is_an_error() {
    let tmp = TempDir::new().unwrap();
    let (dir, index) = sharded(&tmp);
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, text.replace("00002-of", "00009-of")).unwrap();
    let err = load_weights(&graph(DType::BF16), &dir, DIMS).unwrap_err();
    assert!(matches!(err, CheckpointError::MissingShard { .. }), "{err}");
    assert_contains(
        &err.to_string(),
        &[
            "diffusion_pytorch_model-00009-of-00002.safetensors",
            "index.json",
        ],
    );
}

#[test]
fn index_placing_a_tensor_in_the_wrong_shard_is_an_error() {
    let tmp = TempDir::new().unwrap();
    let (dir, index) = sharded(&tmp);
    let text = std::fs::read_to_string(&index).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let map = json["weight_map"].as_object_mut().unwrap();
    let shard = map["x_embedder.weight"].as_str().unwrap().to_string();
    let other = if shard.contains("00001") {
        shard.replace("00001-of", "00002-of")
    } else {
        shard.replace("00002-of", "00001-of")
    };
    map.insert("x_embedder.weight".into(), other.clone().into());
    std::fs::write(&index, json.to_string()).unwrap();
    let msg = load_err(&graph(DType::BF16), &dir);
    assert_contains(&msg, &["x_embedder.weight", &other]);
}

#[test]
fn bad_paths_are_named() {
    let tmp = TempDir::new().unwrap();
    let nowhere = tmp.path().join("no/such/checkpoint");
    let err = load_weights(&graph(DType::BF16), &nowhere, DIMS).unwrap_err();
    assert!(matches!(err, CheckpointError::NotFound { .. }), "{err}");
    assert_contains(&err.to_string(), &["no/such/checkpoint", "does not exist"]);
    assert!(detect_format(&nowhere).is_err());

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("transformer")).unwrap();
    let err = load_weights(&graph(DType::BF16), &empty, DIMS).unwrap_err();
    assert!(
        matches!(err, CheckpointError::NoCheckpointInDir { .. }),
        "{err}"
    );
    assert_contains(&err.to_string(), &["empty"]);
}

#[test]
fn loaded_tensors_have_the_graph_shapes() {
    let tmp = TempDir::new().unwrap();
    let path = single(&tmp, &reference_full());
    let weights = load(&path);
    for (name, shape) in weight_specs() {
        assert_eq!(weights[&name].shape, Shape::new(shape), "{name}");
    }
    assert!(!weights.contains_key("hidden_states"));
}

/// The tiny presets' fixtures (written by diffusers itself, see
/// tests/fixtures/make_flux_fixtures.py) load to the same weights from the
/// sharded diffusers directory and the BFL file, and the BFL name map reads
/// every tensor of the BFL file.
#[test]
fn tiny_fixtures_load_identically_from_both_layouts() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    for preset in ["tiny-schnell", "tiny-dev"] {
        let cfg = ModelConfig::load(&preset_path(preset)).unwrap();
        let graph = build_transformer(&cfg).unwrap();
        let t = cfg.transformer().unwrap();
        let dims = BflDims {
            hidden_size: t.hidden_size,
            mlp_hidden: t.mlp_hidden(),
        };
        let dir = fixtures.join(preset);
        let bfl_path = dir.join("bfl.safetensors");
        assert_eq!(
            detect_format(&dir.join("diffusers")).unwrap(),
            CheckpointFormat::Diffusers
        );
        assert_eq!(detect_format(&bfl_path).unwrap(), CheckpointFormat::Bfl);
        let from_diffusers = load_weights(&graph, &dir.join("diffusers"), dims).unwrap();
        let from_bfl = load_weights(&graph, &bfl_path, dims).unwrap();
        let sources = resolve_sources(&graph, CheckpointFormat::Bfl, dims).unwrap();
        assert_eq!(from_diffusers.len(), sources.len(), "{preset}");
        assert_eq!(from_diffusers, from_bfl, "{preset}");

        let read: BTreeSet<&str> = sources.values().flat_map(|s| s.tensor_names()).collect();
        let bfl = Checkpoint::open(&bfl_path).unwrap();
        let stored: BTreeSet<&str> = bfl.tensor_names().into_iter().collect();
        assert_eq!(
            read, stored,
            "{preset}: BFL tensors the graph does not read, or lacks"
        );
    }
}
