//! `fluxc compile`: `--dump-after` for every pass, the artifact it writes,
//! and its errors.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use fluxc_passes::pipeline::STEPS;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fluxc() -> Command {
    Command::cargo_bin("fluxc").unwrap()
}

fn tiny() -> PathBuf {
    repo().join("models/tiny-schnell.toml")
}

/// tiny-schnell's model.toml in bf16 with heads of 64 (hidden 128), so that
/// its attention is the tensor-core kernel.
fn tiny_bf16_d64() -> String {
    std::fs::read_to_string(tiny())
        .unwrap()
        .replace("dtype = \"f32\"", "dtype = \"bf16\"")
        .replace("attention_head_dim = 16", "attention_head_dim = 64")
        .replace("hidden_size = 32", "hidden_size = 128")
        .replace(
            "axes_dims_rope = [4, 6, 6]",
            "axes_dims_rope = [16, 24, 24]",
        )
}

/// `fluxc compile -o out [extra...] tiny-schnell.toml`.
fn compile_tiny(out: &Path, extra: &[&std::ffi::OsStr]) -> assert_cmd::assert::Assert {
    fluxc()
        .args(["compile", "-o"])
        .arg(out)
        .args(extra)
        .arg(tiny())
        .assert()
}

#[test]
fn dump_after_works_for_every_pass() {
    for step in STEPS {
        let out = fluxc()
            .args(["compile", "--dump-after", step.name()])
            .arg(tiny())
            .assert()
            .success();
        let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        assert!(
            stdout.contains("output \"sample\" = %"),
            "{}: {stdout}",
            step.name()
        );
        let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
        assert!(stderr.contains(&format!("{}: ", step.name())), "{stderr}");
    }
}

#[test]
fn dumps_show_what_each_pass_did() {
    let dump = |step: &str| {
        let out = fluxc()
            .args(["compile", "--dump-after", step])
            .arg(tiny())
            .assert()
            .success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    };
    assert!(!dump("cse").contains("{to_q,to_k,to_v}"));
    assert!(dump("fuse_qkv").contains("concat[axis=0]"));
    let hoisted = dump("hoist_weights");
    assert!(
        hoisted.contains("# weights derived at load time"),
        "{hoisted}"
    );
    assert!(hoisted.contains(
        "transformer_blocks.0.attn.{to_q,to_k,to_v}.weight = concat(transformer_blocks.0.attn.to_q.weight, "
    ));
    let fusion = dump("fusion");
    assert!(fusion.contains(" gemm anchor="), "{fusion}");
    assert!(fusion.contains("refused %"), "{fusion}");
}

#[test]
fn unknown_pass_is_a_clear_error() {
    let out = fluxc()
        .args(["compile", "--dump-after", "fuse_everything"])
        .arg(tiny())
        .assert()
        .failure()
        .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("unknown pass `fuse_everything`"),
        "{stderr}"
    );
    assert!(stderr.contains(
        "dce, cse, simplify, conv1x1_as_mm, conv_im2col, fuse_qkv, fp8, hoist_weights, fusion"
    ));
}

#[test]
fn writes_an_artifact_and_replaces_only_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("art");
    compile_tiny(&out, &[]).success();
    for file in [
        "manifest.json",
        "schedule.json",
        "kernels.cu",
        "graph.txt",
        "fusion.txt",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let fused = manifest["weights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "transformer_blocks.0.attn.{to_q,to_k,to_v}.bias")
        .expect("the fused q/k/v bias is a weight");
    assert_eq!(fused["sources"]["diffusers"]["kind"], "concat");
    // In a BFL file the fused bias is stored as one tensor: read as stored.
    assert_eq!(fused["sources"]["bfl"]["kind"], "rows");
    // Compiling again replaces the artifact.
    compile_tiny(&out, &[]).success();
    // A directory that is not an artifact is never overwritten.
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    let failed = compile_tiny(&precious, &[]).failure();
    let stderr = String::from_utf8(failed.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("is not a fluxc artifact"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(precious.join("notes.txt")).unwrap(),
        "keep me"
    );
    // Nothing half-written is left next to the outputs.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_fp8_glob_in_model_toml_names_the_field() {
    let text = std::fs::read_to_string(tiny()).unwrap()
        + "fp8 = \"dynamic-row\"\nfp8_include = [\"transformer_blocks.[0\"]\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.toml");
    std::fs::write(&path, text).unwrap();
    let out = fluxc().arg("compile").arg(&path).assert().failure().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("passes.fp8_include: bad glob"), "{stderr}");
}

#[test]
fn vae_dumps_show_im2col_convs_and_their_weight_derivations() {
    let out = fluxc()
        .args(["compile", "--dump-after", "hoist_weights"])
        .arg(repo().join("models/tiny-vae.toml"))
        .assert()
        .success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(stdout.contains("input[\"z\"]"), "{stdout}");
    assert!(stdout.contains("output \"sample\" = %"), "{stdout}");
    // conv1x1_as_mm and fuse_qkv ran on the VAE too.
    assert!(
        stdout.contains("decoder.mid_block.attentions.0.{to_q,to_k,to_v}.weight = concat("),
        "{stdout}"
    );
    assert!(
        stdout.contains("conv_shortcut.weight.view(16,32) = reshape("),
        "{stdout}"
    );
    // conv_im2col permutes the 3×3 conv weights at load time.
    assert!(
        stdout.contains("im2col[kernel=3x3 stride=1x1 pad=1x1]"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "decoder.conv_in.weight.permute(0,2,3,1).view(32,36) = \
             reshape(permute(decoder.conv_in.weight, [0, 2, 3, 1]), [32, 36])"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("conv2d["), "{stdout}");
}

/// `fluxc compile` of a VAE preset: the artifact's steps and the load-time
/// derivation of a conv weight in both checkpoint layouts.
fn compile_vae(preset: &str) -> (serde_json::Value, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("art");
    let assert = fluxc()
        .args(["compile", "-o"])
        .arg(&out)
        .arg(repo().join(format!("models/{preset}.toml")))
        .assert()
        .success();
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(file)).unwrap()).unwrap()
    };
    // The runtime's own checks accept it.
    fluxc_runtime::Artifact::load(&out).unwrap();
    (read("manifest.json"), read("schedule.json"), stderr)
}

#[test]
fn the_vae_presets_compile() {
    for (preset, conv_in) in [
        (
            "tiny-vae",
            "decoder.conv_in.weight.permute(0,2,3,1).view(32,36)",
        ),
        (
            "flux-vae",
            "decoder.conv_in.weight.permute(0,2,3,1).view(512,144)",
        ),
    ] {
        let (manifest, schedule, stderr) = compile_vae(preset);
        assert!(stderr.contains("codegen: "), "{preset}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let weight = manifest["weights"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == conv_in)
            .unwrap_or_else(|| panic!("{preset}: no weight {conv_in}"));
        for layout in ["diffusers", "bfl"] {
            let source = &weight["sources"][layout];
            assert_eq!(source["kind"], "reshape", "{preset} {layout}");
            assert_eq!(source["of"]["kind"], "permute", "{preset} {layout}");
        }
        let steps = schedule["steps"].as_array().unwrap();
        let kernels: Vec<&str> = steps.iter().filter_map(|s| s["kernel"].as_str()).collect();
        for kind in ["group_stats", "group_norm_silu"] {
            assert!(
                kernels.iter().any(|k| k.contains(kind)),
                "{preset}: no {kind} kernel in {kernels:?}"
            );
        }
        // flux-vae's 3×3 convolutions run through cuDNN (its [passes]), the
        // tiny one's as im2col kernels and GEMMs.
        let cudnn = preset == "flux-vae";
        assert_eq!(
            kernels.iter().any(|k| k.contains("im2col")),
            !cudnn,
            "{preset}: {kernels:?}"
        );
        assert_eq!(
            steps.iter().filter(|s| s["step"] == "conv").count(),
            if cudnn { 33 } else { 0 },
            "{preset}"
        );
        // The mid block's one head: 32 wide in tiny-vae (the CUDA-core flash
        // kernel), 512 in flux-vae (decomposed: GEMMs around a softmax).
        let decomposed = preset == "flux-vae";
        assert_eq!(
            kernels.iter().any(|k| k.contains("attention_softmax")),
            decomposed,
            "{preset}: {kernels:?}"
        );
        assert_eq!(
            steps.iter().any(|s| s["step"] == "attention"),
            !decomposed,
            "{preset}"
        );
    }
}

#[test]
fn a_tuning_cache_gives_gemms_their_recorded_algorithms() {
    use fluxc_artifact::{content_hash, tuning_key, Step, TuningCache, TuningRecord};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("art");
    compile_tiny(&out, &[]).success();
    let artifact = fluxc_runtime::Artifact::load(&out).unwrap();
    let schedule = &artifact.schedule;
    let (index, key) = schedule
        .steps
        .iter()
        .enumerate()
        .find_map(|(i, s)| match s {
            Step::Gemm(g) => Some((i, fluxc_runtime::gemm_tuning::gemm_key(schedule, g))),
            _ => None,
        })
        .unwrap();
    let mut config = std::collections::BTreeMap::from([("candidate".to_string(), 3i64)]);
    for w in 0..8 {
        config.insert(format!("algo_word_{w}"), 100 + w);
    }
    let mut cache = TuningCache::default();
    cache.entries.insert(
        tuning_key(
            &content_hash(key.as_bytes(), b""),
            &key,
            "NVIDIA H200",
            "13000",
        ),
        TuningRecord {
            name: "first GEMM".into(),
            config,
            time_us: 5.0,
            default_time_us: 10.0,
            measurements: 8,
        },
    );
    let cache_path = tmp.path().join("tuning.json");
    fluxc_autotune::cache::save(&cache_path, &cache).unwrap();
    let assert = compile_tiny(&out, &["--tuning-cache".as_ref(), cache_path.as_os_str()]).success();
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("take tuned algorithms") && stderr.contains("H200"),
        "{stderr}"
    );
    // The artifact still validates (content hash recomputed) and the GEMM
    // carries the recorded words.
    let tuned = fluxc_runtime::Artifact::load(&out).unwrap();
    let Step::Gemm(g) = &tuned.schedule.steps[index] else {
        panic!("step {index} is not a GEMM")
    };
    assert_eq!(g.algo, Some([100, 101, 102, 103, 104, 105, 106, 107]));
}

#[test]
fn tune_without_cuda_is_a_clear_error() {
    if fluxc_runtime::cuda::driver_library_present() {
        println!("SKIP tune_without_cuda_is_a_clear_error: a CUDA driver is present");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = fluxc()
        .current_dir(tmp.path())
        .args(["compile", "--tune"])
        .arg(tiny())
        .assert()
        .failure()
        .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("--tune measures on the GPU") && stderr.contains("CUDA is not available"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_tuning_cache_gives_kernels_their_recorded_launches() {
    use fluxc_artifact::{content_hash, tuning_key, TuningCache, TuningRecord};
    use fluxc_codegen::launch::tunable_kernels;
    let cfg = fluxc_models::ModelConfig::load(&tiny()).unwrap();
    let graph = fluxc_models::build_graph(&cfg).unwrap();
    let optimized = fluxc_passes::pipeline::optimize(graph, &cfg.passes.options()).unwrap();
    let kernels = tunable_kernels(&optimized).unwrap();
    // A pointwise kernel (one field: block_threads), recorded at 128.
    let kernel = kernels
        .iter()
        .find(|k| k.space.fields.len() == 1)
        .expect("a pointwise kernel");
    let mut cache = TuningCache::default();
    cache.entries.insert(
        tuning_key(
            &content_hash(kernel.default.source.as_bytes(), b""),
            "kernel",
            "NVIDIA H200",
            "13000",
        ),
        TuningRecord {
            name: kernel.default.ops.join(" "),
            config: std::collections::BTreeMap::from([
                ("block_threads".to_string(), 128),
                ("threads_per_row".to_string(), 0),
            ]),
            time_us: 1.0,
            default_time_us: 2.0,
            measurements: 4,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache_path = tmp.path().join("tuning.json");
    fluxc_autotune::cache::save(&cache_path, &cache).unwrap();
    let out = tmp.path().join("art");
    let assert = compile_tiny(&out, &["--tuning-cache".as_ref(), cache_path.as_os_str()]).success();
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("tuning: 1 of ")
            && stderr.contains(" kernel(s) found in the cache, 1 with a non-default launch"),
        "{stderr}"
    );
    let kernels_cu = std::fs::read_to_string(out.join("kernels.cu")).unwrap();
    assert!(
        kernels_cu.contains("__launch_bounds__(128)"),
        "no 128-thread kernel"
    );
    // The artifact still validates.
    fluxc_runtime::Artifact::load(&out).unwrap();
}

#[test]
fn a_tuning_cache_gives_attention_its_recorded_tiles() {
    use fluxc_artifact::{content_hash, tuning_key, Step, TuningCache, TuningRecord};
    use fluxc_codegen::launch::tunable_attention;
    // tiny-schnell in bf16 with heads of 64, so its attention is the
    // tensor-core kernel (19 tokens: 12 image + 7 text).
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-bf16-d64.toml");
    let text = tiny_bf16_d64();
    std::fs::write(&model, text).unwrap();
    let cfg = fluxc_models::ModelConfig::load(&model).unwrap();
    let graph = fluxc_models::build_graph(&cfg).unwrap();
    let optimized = fluxc_passes::pipeline::optimize(graph, &cfg.passes.options()).unwrap();
    let problems = tunable_attention(&optimized).unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].dims, [1, 2, 19, 19, 64]);
    let mut cache = TuningCache::default();
    cache.entries.insert(
        tuning_key(
            &content_hash(problems[0].default.source.as_bytes(), b""),
            "attention 1x2x19x19x64",
            "NVIDIA H200",
            "13000",
        ),
        TuningRecord {
            name: "attention 1x2x19x19x64".into(),
            config: std::collections::BTreeMap::from([
                ("block_n".to_string(), 128),
                ("stages".to_string(), 3),
            ]),
            time_us: 10.0,
            default_time_us: 11.0,
            measurements: 3,
        },
    );
    let cache_path = tmp.path().join("tuning.json");
    fluxc_autotune::cache::save(&cache_path, &cache).unwrap();
    let out = tmp.path().join("art");
    let assert = fluxc()
        .args(["compile", "-o"])
        .arg(&out)
        .arg("--tuning-cache")
        .arg(&cache_path)
        .arg(&model)
        .assert()
        .success();
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains(
            "tuning: 1 of 1 attention problem(s) found in the cache, 1 with non-default tiles"
        ),
        "{stderr}"
    );
    let artifact = fluxc_runtime::Artifact::load(&out).unwrap();
    let kernels: Vec<&str> = artifact
        .schedule
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Attention(a) => Some(a.kernel.as_str()),
            _ => None,
        })
        .collect();
    assert!(!kernels.is_empty());
    assert!(
        kernels.iter().all(|k| *k == "attention_d64_n128_s3_bf16"),
        "{kernels:?}"
    );
}

#[test]
fn a_tuning_cache_keeps_the_shapes_it_measured_faster_in_bf16() {
    use fluxc_artifact::{content_hash, tuning_key, Step, TuningCache, TuningRecord};
    // tiny-schnell in bf16 (heads of 64) with fp8 per row on every block
    // linear of at least 8 rows.
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-fp8.toml");
    let text = tiny_bf16_d64() + "fp8 = \"dynamic-row\"\nfp8_min_rows = 8\n";
    std::fs::write(&model, text).unwrap();
    let cfg = fluxc_models::ModelConfig::load(&model).unwrap();
    let options = cfg.passes.options();
    let optimized =
        fluxc_passes::pipeline::optimize(fluxc_models::build_graph(&cfg).unwrap(), &options)
            .unwrap();
    let graph = &optimized.graph;
    let shape = graph
        .node_ids()
        .into_iter()
        .find(|&id| matches!(graph.node(id).op, fluxc_ir::Op::ScaledLinear { .. }))
        .map(|id| {
            let ops = graph.operands(id);
            let w = graph.ty(ops[2]).shape.dims().to_vec();
            [graph.ty(ops[0]).shape.numel() / w[1], w[1], w[0]]
        })
        .expect("an fp8 linear");
    // The decision as `fluxc compile --tune` records it (crates/cli/src/fp8_choice.rs).
    let what = format!("{shape:?} DynamicRow fast_accumulation=false");
    let mut cache = TuningCache::default();
    cache.entries.insert(
        tuning_key(
            &content_hash(what.as_bytes(), b""),
            "fp8-choice",
            "NVIDIA H200",
            "13000",
        ),
        TuningRecord {
            name: "fp8 or bf16".into(),
            config: std::collections::BTreeMap::from([
                ("bf16".to_string(), 1),
                ("bf16_us_x1000".to_string(), 9_000),
            ]),
            time_us: 9.0,
            default_time_us: 10.0,
            measurements: 2,
        },
    );
    let cache_path = tmp.path().join("tuning.json");
    fluxc_autotune::cache::save(&cache_path, &cache).unwrap();
    let scaled_of = |out: &Path| {
        let artifact = fluxc_runtime::Artifact::load(out).unwrap();
        let [rows, k, n] = shape.map(|v| v as u64);
        let gemms: Vec<bool> = artifact
            .schedule
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Gemm(g) if (g.m, g.n, g.k) == (n, rows, k) => Some(g.scales.is_some()),
                _ => None,
            })
            .collect();
        gemms
    };
    let plain = tmp.path().join("plain");
    fluxc()
        .args(["compile", "-o"])
        .arg(&plain)
        .arg(&model)
        .assert()
        .success();
    let tuned = tmp.path().join("tuned");
    let assert = fluxc()
        .args(["compile", "-o"])
        .arg(&tuned)
        .arg("--tuning-cache")
        .arg(&cache_path)
        .arg(&model)
        .assert()
        .success();
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("1 kept in bf16"), "{stderr}");
    let (before, after) = (scaled_of(&plain), scaled_of(&tuned));
    assert!(
        !before.is_empty() && before.iter().all(|fp8| *fp8),
        "{before:?}"
    );
    assert!(
        after.len() == before.len() && after.iter().all(|fp8| !fp8),
        "{after:?}"
    );
}

/// A tuning cache with a record, measured on one H200, of every generated
/// kernel and every GEMM of tiny-schnell as compiled by default: each
/// kernel at 128 threads, each GEMM with a faster algorithm.
fn full_cache() -> (fluxc_artifact::TuningCache, usize, usize) {
    use fluxc_artifact::{content_hash, tuning_key, Step, TuningCache, TuningRecord};
    use fluxc_codegen::launch::tunable_kernels;
    use std::collections::BTreeMap;
    let cfg = fluxc_models::ModelConfig::load(&tiny()).unwrap();
    let graph = fluxc_models::build_graph(&cfg).unwrap();
    let optimized = fluxc_passes::pipeline::optimize(graph, &cfg.passes.options()).unwrap();
    let kernels = tunable_kernels(&optimized).unwrap();
    let mut cache = TuningCache::default();
    let record = |config: BTreeMap<String, i64>| TuningRecord {
        name: "r".into(),
        config,
        time_us: 1.0,
        default_time_us: 2.0,
        measurements: 4,
    };
    for kernel in &kernels {
        let key = tuning_key(
            &content_hash(kernel.default.source.as_bytes(), b""),
            "kernel",
            "NVIDIA H200",
            "13000",
        );
        let config = BTreeMap::from([
            ("block_threads".to_string(), 128),
            ("threads_per_row".to_string(), 0),
        ]);
        cache.entries.insert(key, record(config));
    }
    let tmp = tempfile::tempdir().unwrap();
    compile_tiny(&tmp.path().join("art"), &[]).success();
    let artifact = fluxc_runtime::Artifact::load(&tmp.path().join("art")).unwrap();
    let schedule = &artifact.schedule;
    let mut gemm_steps = 0;
    for step in &schedule.steps {
        let Step::Gemm(g) = step else { continue };
        gemm_steps += 1;
        let key = fluxc_runtime::gemm_tuning::gemm_key(schedule, g);
        let mut config = BTreeMap::from([("candidate".to_string(), 1i64)]);
        for w in 0..8 {
            config.insert(format!("algo_word_{w}"), 7);
        }
        let entry = tuning_key(
            &content_hash(key.as_bytes(), b""),
            &key,
            "NVIDIA H200",
            "13000",
        );
        cache.entries.insert(entry, record(config));
    }
    (cache, kernels.len(), gemm_steps)
}

/// tiny-schnell's model.toml with `[autotune]` lines appended, written
/// into `dir`.
fn tiny_with_autotune(dir: &Path, lines: &str) -> PathBuf {
    let text = std::fs::read_to_string(tiny()).unwrap() + "\n[autotune]\n" + lines;
    let path = dir.join("model.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr_of(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(assert.get_output().stderr.clone()).unwrap()
}

#[test]
fn a_cache_holding_everything_gives_every_kernel_and_gemm_its_record() {
    let (cache, kernels, gemms) = full_cache();
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    // `[autotune] cache` is relative to the model.toml, not the working
    // directory.
    fluxc_autotune::cache::save(&models.join("h200.json"), &cache).unwrap();
    let model = tiny_with_autotune(&models, "cache = \"h200.json\"\n");
    let out = tmp.path().join("art");
    let started = std::time::Instant::now();
    let assert = fluxc()
        .current_dir(tmp.path())
        .args(["compile", "-o"])
        .arg(&out)
        .arg(&model)
        .assert()
        .success();
    let stderr = stderr_of(&assert);
    assert!(
        stderr.contains(&format!(
            "tuning: {kernels} of {kernels} kernel(s) found in the cache"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "tuning: {gemms} of {gemms} GEMM steps take tuned algorithms from `{}`",
            models.join("h200.json").display()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("tuning the"),
        "nothing tuned on a GPU: {stderr}"
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "a compile from the cache takes seconds"
    );
    // The cache is only read.
    assert_eq!(
        fluxc_autotune::cache::load(&models.join("h200.json")).unwrap(),
        cache
    );
    fluxc_runtime::Artifact::load(&out).unwrap();

    // --tuning-cache overrides the file's cache.
    let assert = fluxc()
        .current_dir(tmp.path())
        .args(["compile", "--tuning-cache", "elsewhere.json"])
        .arg(&model)
        .assert()
        .success();
    let stderr = stderr_of(&assert);
    assert!(
        stderr.contains(&format!(
            "tuning: 0 of {kernels} kernel(s) found in the cache"
        )) && stderr.contains("0 of ")
            && stderr.contains("from `elsewhere.json`"),
        "{stderr}"
    );
}

#[test]
fn tune_with_the_search_off_measures_nothing_and_needs_no_gpu() {
    let (cache, kernels, _) = full_cache();
    let tmp = tempfile::tempdir().unwrap();
    fluxc_autotune::cache::save(&tmp.path().join("t.json"), &cache).unwrap();
    let model = tiny_with_autotune(
        tmp.path(),
        "coordinate_descent = false\ncache = \"t.json\"\n",
    );
    let assert = fluxc()
        .current_dir(tmp.path())
        .args(["compile", "--tune"])
        .arg(&model)
        .assert()
        .success();
    let stderr = stderr_of(&assert);
    assert!(stderr.contains("coordinate descent is off"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{kernels} of {kernels} kernel(s) found in the cache"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("measures on the GPU"), "{stderr}");
    // The flag turns it back on: then the GPU is needed.
    if !fluxc_runtime::cuda::driver_library_present() {
        let assert = fluxc()
            .current_dir(tmp.path())
            .args(["compile", "--tune", "--coordinate-descent", "true"])
            .arg(&model)
            .assert()
            .failure()
            .code(1);
        assert!(stderr_of(&assert).contains("--tune measures on the GPU"));
    }
}

#[test]
fn bad_budgets_are_clear_errors() {
    let out = fluxc()
        .args(["compile", "--tune", "--tune-budget", "-3"])
        .arg(tiny())
        .assert()
        .failure()
        .code(1);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("a tuning budget must be a positive, finite number of seconds, got -3"),
        "{stderr}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_with_autotune(tmp.path(), "budget_s = -1\n");
    let out = fluxc()
        .arg("compile")
        .arg(&model)
        .assert()
        .failure()
        .code(1);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("model.toml:")
            && stderr.contains(": autotune.budget_s: must be a positive"),
        "{stderr}"
    );
}

#[test]
fn pipeline_compiles_into_three_artifacts_and_a_spec() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pipe");
    fluxc()
        .args(["compile", "-o"])
        .arg(&out)
        .arg(repo().join("models/tiny-schnell-pipeline.toml"))
        .assert()
        .success();
    for sub in ["conditioning", "transformer", "vae"] {
        assert!(out.join(sub).join("manifest.json").is_file(), "{sub}");
    }
    let json = std::fs::read_to_string(out.join("pipeline.json")).unwrap();
    let spec: fluxc_artifact::PipelineSpec = serde_json::from_str(&json).unwrap();
    spec.validate().unwrap();
    assert_eq!(spec.steps, 4);
    assert_eq!(spec.latent.packed(), [1, 12, 16]);
    // The conditioning of all 4 steps: 2 double blocks (12 vectors each), 2
    // single ones (3 each), norm_out (2), of tiny-schnell's 32 channels.
    let conditioning = spec.conditioning.as_ref().expect("hoisted by default");
    assert_eq!(conditioning.width, (2 * 12 + 2 * 3 + 2) * 32);
    let schedule = |sub: &str| -> fluxc_artifact::Schedule {
        let text = std::fs::read_to_string(out.join(sub).join("schedule.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let shape = |s: &fluxc_artifact::Schedule, b: &fluxc_artifact::Binding| {
        s.buffers[b.buffer as usize].shape.clone()
    };
    let c = schedule("conditioning");
    let outputs: Vec<_> = c
        .outputs
        .iter()
        .map(|b| (b.name.as_str(), shape(&c, b)))
        .collect();
    assert_eq!(outputs, [("modulation", vec![4, conditioning.width])]);
    let t = schedule("transformer");
    let inputs: Vec<&str> = t.inputs.iter().map(|b| b.name.as_str()).collect();
    assert!(
        inputs.contains(&"modulation") && !inputs.contains(&"timestep"),
        "{inputs:?}"
    );
    // The runtime's host checks find the three fit together.
    fluxc_runtime::pipeline::check_dir(&out).unwrap();
    // The VAE is compiled at the pipeline's 64x48, not tiny-vae's 32x32.
    let schedule = std::fs::read_to_string(out.join("vae/schedule.json")).unwrap();
    let schedule: fluxc_artifact::Schedule = serde_json::from_str(&schedule).unwrap();
    let z = &schedule.buffers[schedule.inputs[0].buffer as usize];
    assert_eq!(z.shape, vec![1, 8, 6, 4]);
    // Compiling again replaces the directory; nothing is left beside it.
    fluxc()
        .args(["compile", "-o"])
        .arg(&out)
        .arg(repo().join("models/tiny-schnell-pipeline.toml"))
        .assert()
        .success();
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
}

#[test]
fn pipeline_refuses_a_foreign_output_dir_and_dump_after() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "x").unwrap();
    let pipe = repo().join("models/tiny-schnell-pipeline.toml");
    let out = fluxc()
        .args(["compile", "-o"])
        .arg(dir.path())
        .arg(&pipe)
        .assert()
        .failure();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("not a pipeline directory"), "{stderr}");
    assert!(dir.path().join("keep.txt").is_file());
    let out = fluxc()
        .args(["compile", "--dump-after", "cse"])
        .arg(&pipe)
        .assert()
        .failure();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("--dump-after is for one model"), "{stderr}");
}
