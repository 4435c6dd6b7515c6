//! `fluxc run`, `fluxc tune` and `fluxc ab` without a GPU: artifact, input and cache
//! problems are reported before CUDA is touched, and a machine without CUDA
//! gets an error saying so (never a panic), with the artifact unchanged.
//! Running on the GPU is exercised on the H200.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use fluxc_artifact::{
    content_hash, files, Arg, Binding, Buffer, CheckpointLayout, ElemType, Launch, Manifest,
    Region, Schedule, Step, Tensor, WeightEntry, WeightSource, FORMAT_VERSION,
};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const KERNELS: &str = r#"extern "C" __global__ void add(const float* x, const float* b, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] + b[i];
}
"#;

fn buffer(id: u32, name: &str, region: Region, offset: u64) -> Buffer {
    Buffer::new(id, name, ElemType::F32, vec![2, 4], region, offset)
}

/// `y = x + b`, f32 [2, 4], with `b` a weight.
fn write_artifact(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let schedule = Schedule {
        arena_bytes: 512,
        weight_bytes: 256,
        scratch_bytes: 0,
        gemm_workspace_bytes: 0,
        buffers: vec![
            buffer(0, "x", Region::Arena, 0),
            buffer(1, "b", Region::Weights, 0),
            buffer(2, "y", Region::Arena, 256),
        ],
        inputs: vec![Binding {
            name: "x".into(),
            buffer: 0,
        }],
        outputs: vec![Binding {
            name: "y".into(),
            buffer: 2,
        }],
        steps: vec![Step::Launch(Launch {
            kernel: "add".into(),
            grid: [1, 1, 1],
            block: [32, 1, 1],
            shared_bytes: 0,
            args: vec![
                Arg::Ptr(Tensor::of(0)),
                Arg::Ptr(Tensor::of(1)),
                Arg::Ptr(Tensor::of(2)),
                Arg::I32(8),
            ],
        })],
    };
    let schedule_json = serde_json::to_vec(&schedule).unwrap();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        compiler: "hand-written".into(),
        model_name: "toy".into(),
        content_hash: content_hash(&schedule_json, KERNELS.as_bytes()),
        arch: "sm_90a".into(),
        layouts: vec![CheckpointLayout {
            name: "diffusers".into(),
            strip_prefixes: vec![],
        }],
        weights: vec![WeightEntry {
            name: "b".into(),
            buffer: 1,
            sources: BTreeMap::from([("diffusers".to_string(), WeightSource::tensor("b"))]),
        }],
    };
    std::fs::write(dir.join(files::SCHEDULE), &schedule_json).unwrap();
    std::fs::write(dir.join(files::KERNELS), KERNELS).unwrap();
    std::fs::write(
        dir.join(files::MANIFEST),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
}

/// A safetensors file of f32 tensors.
fn write_tensors(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| {
            (0..s.iter().product::<usize>())
                .flat_map(|i| (i as f32).to_le_bytes())
                .collect()
        })
        .collect();
    let views: BTreeMap<String, TensorView> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s), b)| {
            (
                n.to_string(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(&views, None, path).unwrap();
}

/// An artifact, a checkpoint and a temporary directory holding them.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = tmp.path().join("artifact");
    write_artifact(&artifact);
    let weights = tmp.path().join("weights.safetensors");
    write_tensors(&weights, &[("b", vec![2, 4])]);
    (tmp, artifact, weights)
}

/// Runs `fluxc run` with `args`, expecting exit code 1; returns stderr.
fn run_fails(args: &[&std::ffi::OsStr]) -> String {
    fails("run", args)
}

/// Runs `fluxc <command>` with `args`, expecting exit code 1; returns stderr.
fn fails(command: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::cargo_bin("fluxc")
        .unwrap()
        .arg(command)
        .args(args)
        .assert()
        .failure()
        .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("error: "), "{stderr}");
    stderr
}

#[test]
fn a_missing_artifact_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("nowhere");
    let stderr = run_fails(&[nowhere.as_os_str(), "--weights".as_ref(), "w".as_ref()]);
    assert!(
        stderr.contains("nowhere") && stderr.contains("manifest.json"),
        "{stderr}"
    );
}

#[test]
fn missing_and_misshaped_inputs_are_named() {
    let (tmp, artifact, weights) = setup();
    let inputs = tmp.path().join("io.safetensors");
    write_tensors(&inputs, &[("other", vec![3])]);
    let args = [
        artifact.as_os_str(),
        "--weights".as_ref(),
        weights.as_os_str(),
        "--inputs".as_ref(),
        inputs.as_os_str(),
    ];
    let stderr = run_fails(&args);
    assert!(
        stderr.contains("input `x`") && stderr.contains("missing") && stderr.contains("`other`"),
        "{stderr}"
    );
    write_tensors(&inputs, &[("x", vec![4, 2])]);
    let stderr = run_fails(&args);
    assert!(
        stderr.contains("input `x`") && stderr.contains("[4, 2]") && stderr.contains("[2, 4]"),
        "{stderr}"
    );
}

#[test]
fn without_cuda_the_error_says_so() {
    if fluxc_runtime::cuda::driver_library_present() {
        println!("SKIP without_cuda_the_error_says_so: a CUDA driver is present here");
        return;
    }
    let (tmp, artifact, weights) = setup();
    let inputs = tmp.path().join("io.safetensors");
    write_tensors(&inputs, &[("x", vec![2, 4])]);
    let stderr = run_fails(&[
        artifact.as_os_str(),
        "--weights".as_ref(),
        weights.as_os_str(),
        "--inputs".as_ref(),
        inputs.as_os_str(),
        "--replays".as_ref(),
        "5".as_ref(),
    ]);
    assert!(stderr.contains("CUDA is not available"), "{stderr}");
}

#[test]
fn save_quantized_without_cuda_says_so_and_writes_nothing() {
    if fluxc_runtime::cuda::driver_library_present() {
        println!(
            "SKIP save_quantized_without_cuda_says_so_and_writes_nothing: a CUDA driver is present"
        );
        return;
    }
    let (_tmp, artifact, weights) = setup();
    let stderr = run_fails(&[
        artifact.as_os_str(),
        "--weights".as_ref(),
        weights.as_os_str(),
        "--save-quantized".as_ref(),
    ]);
    assert!(stderr.contains("CUDA is not available"), "{stderr}");
    assert!(!artifact.join(fluxc_runtime::fp8_cache::FILE).exists());
}

#[test]
fn tune_without_cuda_says_so_and_leaves_the_artifact() {
    if fluxc_runtime::cuda::driver_library_present() {
        println!(
            "SKIP tune_without_cuda_says_so_and_leaves_the_artifact: a CUDA driver is present"
        );
        return;
    }
    let (_tmp, artifact, _) = setup();
    let before = std::fs::read(artifact.join(files::SCHEDULE)).unwrap();
    let stderr = fails("tune", &[artifact.as_os_str()]);
    assert!(stderr.contains("CUDA is not available"), "{stderr}");
    assert_eq!(
        std::fs::read(artifact.join(files::SCHEDULE)).unwrap(),
        before
    );
}

#[test]
fn tune_names_a_broken_cache_before_measuring() {
    let (tmp, artifact, _) = setup();
    let cache = tmp.path().join("tuning.json");
    std::fs::write(&cache, "{ not json").unwrap();
    let stderr = fails(
        "tune",
        &[artifact.as_os_str(), "--cache".as_ref(), cache.as_os_str()],
    );
    assert!(
        stderr.contains("tuning.json") && stderr.contains("not valid"),
        "{stderr}"
    );
}

#[test]
fn tune_refuses_sustained_timings_into_a_cache() {
    let (tmp, artifact, _) = setup();
    let cache = tmp.path().join("tuning.json");
    let stderr = fails(
        "tune",
        &[
            artifact.as_os_str(),
            "--cache".as_ref(),
            cache.as_os_str(),
            "--sustain-ms".as_ref(),
            "300".as_ref(),
        ],
    );
    assert!(stderr.contains("--sustain-ms"), "{stderr}");
    assert!(!cache.exists());
}

/// A tiny VAE artifact whose latents are not square (6×4, so NCHW and NHWC
/// shapes differ), compiled into `dir`.
fn vae_artifact(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(repo.join("models/tiny-vae.toml"))
        .unwrap()
        .replace("height = 32", "height = 48");
    let model = dir.join("vae.toml");
    std::fs::write(&model, text).unwrap();
    let artifact = dir.join("vae");
    Command::cargo_bin("fluxc")
        .unwrap()
        .args(["compile", "-o"])
        .arg(&artifact)
        .arg(&model)
        .assert()
        .success();
    artifact
}

#[test]
fn vae_latents_are_read_channels_last_or_with_nchw() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = vae_artifact(tmp.path());
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-vae/ae.safetensors");
    let inputs = tmp.path().join("io.safetensors");
    let args = |extra: &[&str]| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec![
            artifact.clone().into(),
            "--weights".into(),
            weights.clone().into(),
            "--inputs".into(),
            inputs.clone().into(),
        ];
        v.extend(extra.iter().map(|s| s.into()));
        v
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        run_fails(&refs)
    };
    // NCHW latents, as diffusers holds them.
    write_tensors(&inputs, &[("z", vec![1, 4, 6, 4])]);
    let stderr = run(&[]);
    assert!(
        stderr.contains("input `z`")
            && stderr.contains("[1, 6, 4, 4] (NHWC)")
            && stderr.contains("pass --nchw"),
        "{stderr}"
    );
    if !fluxc_runtime::cuda::driver_library_present() {
        // Past the input checks: only the GPU is missing.
        let stderr = run(&["--nchw"]);
        assert!(stderr.contains("CUDA is not available"), "{stderr}");
    }
    // Channels-last latents under --nchw are named as such.
    write_tensors(&inputs, &[("z", vec![1, 6, 4, 4])]);
    let stderr = run(&["--nchw"]);
    assert!(
        stderr.contains("[1, 4, 6, 4] (NCHW, as --nchw says)"),
        "{stderr}"
    );
}

/// `fluxc ab`: two artifacts that take different inputs are refused before
/// the GPU, naming both; bad counts are refused; a machine without CUDA
/// gets an error saying so.
#[test]
fn ab_checks_its_artifacts_before_the_gpu() {
    let (tmp, artifact, weights) = setup();
    let vae = vae_artifact(tmp.path());
    // `fluxc ab A B --weights <weights> <extra...>`, expected to fail.
    let ab = |b: &Path, extra: &[&str]| {
        let mut args = vec![
            artifact.as_os_str(),
            b.as_os_str(),
            "--weights".as_ref(),
            weights.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        fails("ab", &args)
    };
    let stderr = ab(&vae, &[]);
    assert!(stderr.contains("take different inputs"), "{stderr}");
    let stderr = ab(&artifact, &["--rounds", "0"]);
    assert!(stderr.contains("--rounds"), "{stderr}");
    if !fluxc_runtime::cuda::driver_library_present() {
        let stderr = ab(&artifact, &[]);
        assert!(stderr.contains("CUDA is not available"), "{stderr}");
    }
}
