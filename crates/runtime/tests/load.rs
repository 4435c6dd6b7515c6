//! What the runtime checks before (and instead of) touching a GPU: artifact
//! files and their manifest, checkpoint layouts, and the absence of CUDA.
//! Artifacts are built by hand in temporary directories from the
//! `fluxc-artifact` types. NVRTC is exercised when it can be loaded (set
//! `LD_LIBRARY_PATH` and `FLUXC_CUDA_INCLUDE`); otherwise that test says why
//! it skips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fluxc_artifact::{
    content_hash, files, Arg, Binding, Buffer, CheckpointLayout, ElemType, Gemm, GemmEpilogue,
    Launch, Manifest, Region, Schedule, Step, Tensor, WeightEntry, WeightSource, FORMAT_VERSION,
};
use fluxc_runtime::{Artifact, Engine, LoadOptions, RuntimeError};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tempfile::TempDir;

const KERNELS: &str = r#"#include <cuda_bf16.h>
extern "C" __global__ void scale_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, int n, float s) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16_rn(__bfloat162float(x[i]) * s);
}
"#;

/// `y = scale(x Wᵀ + b)`: x [4, 8] → y [4, 16], bf16.
fn schedule() -> Schedule {
    Schedule {
        arena_bytes: 1024,
        weight_bytes: 512,
        scratch_bytes: 0,
        gemm_workspace_bytes: 1 << 20,
        buffers: vec![
            Buffer::new(0, "x", ElemType::Bf16, vec![4, 8], Region::Arena, 0),
            Buffer::new(
                1,
                "proj.weight",
                ElemType::Bf16,
                vec![16, 8],
                Region::Weights,
                0,
            ),
            Buffer::new(
                2,
                "proj.bias",
                ElemType::Bf16,
                vec![16],
                Region::Weights,
                256,
            ),
            Buffer::new(3, "h", ElemType::Bf16, vec![4, 16], Region::Arena, 256),
            Buffer::new(4, "y", ElemType::Bf16, vec![4, 16], Region::Arena, 512),
        ],
        inputs: vec![Binding {
            name: "x".into(),
            buffer: 0,
        }],
        outputs: vec![Binding {
            name: "y".into(),
            buffer: 4,
        }],
        steps: vec![
            Step::Gemm(Gemm {
                name: "proj".into(),
                dtype: ElemType::Bf16,
                trans_a: true,
                trans_b: false,
                m: 16,
                n: 4,
                k: 8,
                a: Tensor::of(1),
                lda: 8,
                b: Tensor::of(0),
                ldb: 8,
                d: Tensor::of(3),
                ldd: 16,
                bias: Some(Tensor::of(2)),
                epilogue: GemmEpilogue::Bias,
                d_dtype: None,
                scales: None,
                fast_accumulation: false,
                algo: None,
                c: None,
            }),
            Step::Launch(Launch {
                kernel: "scale_bf16".into(),
                grid: [1, 1, 1],
                block: [64, 1, 1],
                shared_bytes: 0,
                args: vec![
                    Arg::Ptr(Tensor::of(3)),
                    Arg::Ptr(Tensor::of(4)),
                    Arg::I32(64),
                    Arg::F32(0.5),
                ],
            }),
        ],
    }
}

fn manifest(schedule_json: &[u8], kernels: &[u8]) -> Manifest {
    let weights = [("proj.weight", 1), ("proj.bias", 2)]
        .into_iter()
        .map(|(name, buffer)| WeightEntry {
            name: name.into(),
            buffer,
            sources: BTreeMap::from([
                ("diffusers".to_string(), WeightSource::tensor(name)),
                (
                    "bfl".to_string(),
                    WeightSource::tensor(format!("bfl.{name}")),
                ),
            ]),
        })
        .collect();
    Manifest {
        format_version: FORMAT_VERSION,
        compiler: "hand-written".into(),
        model_name: "toy".into(),
        content_hash: content_hash(schedule_json, kernels),
        arch: "sm_90a".into(),
        layouts: vec![
            CheckpointLayout {
                name: "diffusers".into(),
                strip_prefixes: vec![],
            },
            CheckpointLayout {
                name: "bfl".into(),
                strip_prefixes: vec!["model.diffusion_model.".into()],
            },
        ],
        weights,
    }
}

/// Writes a valid artifact into `dir` and returns it.
fn write_artifact(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let schedule_json = serde_json::to_vec_pretty(&schedule()).unwrap();
    let manifest = manifest(&schedule_json, KERNELS.as_bytes());
    std::fs::write(dir.join(files::SCHEDULE), &schedule_json).unwrap();
    std::fs::write(dir.join(files::KERNELS), KERNELS).unwrap();
    std::fs::write(
        dir.join(files::MANIFEST),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// Rewrites the manifest of the artifact in `dir` through `edit`.
fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(files::MANIFEST);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// A checkpoint with the toy's weights under `prefix`.
fn write_checkpoint(path: &Path, prefix: &str) {
    let w: Vec<u8> = (0..128)
        .flat_map(|i| {
            half::bf16::from_f32(i as f32 / 64.0)
                .to_bits()
                .to_le_bytes()
        })
        .collect();
    let b: Vec<u8> = (0..16)
        .flat_map(|i| half::bf16::from_f32(i as f32).to_bits().to_le_bytes())
        .collect();
    let views = BTreeMap::from([
        (
            format!("{prefix}proj.weight"),
            TensorView::new(Dtype::BF16, vec![16, 8], &w).unwrap(),
        ),
        (
            format!("{prefix}proj.bias"),
            TensorView::new(Dtype::BF16, vec![16], &b).unwrap(),
        ),
    ]);
    safetensors::serialize_to_file(&views, None, path).unwrap();
}

fn quiet() -> LoadOptions {
    LoadOptions {
        progress: false,
        cache_dir: None,
        ..LoadOptions::default()
    }
}

fn assert_contains(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "`{msg}`\ndoes not mention `{n}`");
    }
}

#[test]
fn a_valid_artifact_loads() {
    let tmp = TempDir::new().unwrap();
    let dir = write_artifact(&tmp.path().join("a"));
    let a = Artifact::load(&dir).unwrap();
    assert_eq!(a.manifest.model_name, "toy");
    assert_eq!(a.schedule, schedule());
    assert_eq!(a.kernels, KERNELS);
}

#[test]
fn missing_files_are_named() {
    for file in [files::MANIFEST, files::SCHEDULE, files::KERNELS] {
        let tmp = TempDir::new().unwrap();
        let dir = write_artifact(&tmp.path().join("a"));
        std::fs::remove_file(dir.join(file)).unwrap();
        let err = Artifact::load(&dir).unwrap_err();
        assert!(matches!(err, RuntimeError::ArtifactIo { .. }), "{err}");
        assert_contains(&err.to_string(), &[file, "cannot read artifact file"]);
    }
    let tmp = TempDir::new().unwrap();
    let err = Artifact::load(&tmp.path().join("nowhere")).unwrap_err();
    assert_contains(&err.to_string(), &["nowhere", "manifest.json"]);
}

#[test]
fn bad_json_is_named() {
    let tmp = TempDir::new().unwrap();
    let dir = write_artifact(&tmp.path().join("a"));
    std::fs::write(dir.join(files::MANIFEST), "{ not json").unwrap();
    let err = Artifact::load(&dir).unwrap_err();
    assert!(matches!(err, RuntimeError::ArtifactJson { .. }), "{err}");
    assert_contains(&err.to_string(), &["manifest.json", "not a valid manifest"]);

    edit_manifest(&write_artifact(&dir), |v| {
        v.as_object_mut().unwrap().remove("layouts");
    });
    assert_contains(
        &Artifact::load(&dir).unwrap_err().to_string(),
        &["manifest.json", "layouts"],
    );

    // A schedule that is not JSON, with a manifest hashing it correctly.
    let dir = write_artifact(&tmp.path().join("b"));
    let bad = b"[1, 2";
    std::fs::write(dir.join(files::SCHEDULE), bad).unwrap();
    edit_manifest(&dir, |v| {
        v["content_hash"] = content_hash(bad, KERNELS.as_bytes()).into();
    });
    let err = Artifact::load(&dir).unwrap_err();
    assert_contains(&err.to_string(), &["schedule.json", "not a valid schedule"]);
}

#[test]
fn other_format_versions_are_refused() {
    let tmp = TempDir::new().unwrap();
    let dir = write_artifact(&tmp.path().join("a"));
    edit_manifest(&dir, |v| v["format_version"] = (FORMAT_VERSION + 1).into());
    let err = Artifact::load(&dir).unwrap_err();
    assert!(matches!(err, RuntimeError::FormatVersion { .. }), "{err}");
    assert_contains(
        &err.to_string(),
        &[
            &format!("format version {}", FORMAT_VERSION + 1),
            &format!("reads format version {FORMAT_VERSION}"),
        ],
    );
    // Also when the rest of a future manifest no longer parses.
    edit_manifest(&dir, |v| {
        v.as_object_mut().unwrap().remove("weights");
    });
    assert!(matches!(
        Artifact::load(&dir).unwrap_err(),
        RuntimeError::FormatVersion { .. }
    ));
}

#[test]
fn edited_files_do_not_match_the_manifest() {
    for file in [files::SCHEDULE, files::KERNELS] {
        let tmp = TempDir::new().unwrap();
        let dir = write_artifact(&tmp.path().join("a"));
        let mut bytes = std::fs::read(dir.join(file)).unwrap();
        bytes.push(b'\n');
        std::fs::write(dir.join(file), bytes).unwrap();
        let err = Artifact::load(&dir).unwrap_err();
        assert!(matches!(err, RuntimeError::HashMismatch { .. }), "{err}");
        assert_contains(
            &err.to_string(),
            &["artifact files do not match their manifest"],
        );
    }
}

#[test]
fn invalid_schedules_are_refused() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = schedule();
    s.buffers[4].offset = 1000; // past the arena's 1024 bytes
    let schedule_json = serde_json::to_vec(&s).unwrap();
    std::fs::write(dir.join(files::SCHEDULE), &schedule_json).unwrap();
    std::fs::write(dir.join(files::KERNELS), KERNELS).unwrap();
    let m = manifest(&schedule_json, KERNELS.as_bytes());
    std::fs::write(dir.join(files::MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
    let err = Artifact::load(&dir).unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidArtifact { .. }), "{err}");
    assert_contains(
        &err.to_string(),
        &["invalid schedule", "`y`", "outside its region"],
    );
}

#[test]
fn steps_past_their_buffers_are_refused() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = schedule();
    let Step::Gemm(g) = &mut s.steps[0] else {
        unreachable!()
    };
    g.n = 8; // B = x has 4 columns, D = h has 4 columns
    let schedule_json = serde_json::to_vec(&s).unwrap();
    std::fs::write(dir.join(files::SCHEDULE), &schedule_json).unwrap();
    std::fs::write(dir.join(files::KERNELS), KERNELS).unwrap();
    let m = manifest(&schedule_json, KERNELS.as_bytes());
    std::fs::write(dir.join(files::MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
    let err = Artifact::load(&dir).unwrap_err();
    assert!(matches!(err, RuntimeError::Step { index: 0, .. }), "{err}");
    assert_contains(
        &err.to_string(),
        &["gemm `proj`", "B: needs 128 bytes", "`x`"],
    );
}

#[test]
fn checkpoints_matching_no_layout_are_refused_before_cuda() {
    let tmp = TempDir::new().unwrap();
    let dir = write_artifact(&tmp.path().join("a"));
    let ckpt = tmp.path().join("other.safetensors");
    write_checkpoint(&ckpt, "vae.");
    let err = Engine::load(&dir, &ckpt, &quiet()).unwrap_err();
    assert!(
        matches!(err, RuntimeError::NoMatchingLayout { .. }),
        "{err}"
    );
    assert_contains(
        &err.to_string(),
        &[
            "other.safetensors",
            "diffusers:",
            "`proj.weight`",
            "bfl:",
            "`bfl.proj.bias`",
        ],
    );
}

#[test]
fn without_cuda_load_says_what_is_missing() {
    let tmp = TempDir::new().unwrap();
    let dir = write_artifact(&tmp.path().join("a"));
    let ckpt = tmp.path().join("bundle.safetensors");
    // The BFL layout with its prefix stripped: host checks pass.
    write_checkpoint(&ckpt, "model.diffusion_model.bfl.");
    if fluxc_runtime::cuda::driver_library_present() {
        println!("SKIP without_cuda_load_says_what_is_missing: a CUDA driver is present here");
        return;
    }
    let err = Engine::load(&dir, &ckpt, &quiet()).unwrap_err();
    assert!(matches!(err, RuntimeError::NoCuda(_)), "{err}");
    assert_contains(
        &err.to_string(),
        &[
            "CUDA is not available",
            "CUDA driver library",
            "libcuda.so",
            "LD_LIBRARY_PATH",
        ],
    );
}

/// NVRTC compiles the toy's kernel to an sm_90a CUBIN, and reports compile
/// errors with its log. Runs where libnvrtc loads (no GPU needed).
#[test]
fn nvrtc_compiles_to_cubin_where_available() {
    // SAFETY: only tries to dlopen libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!("SKIP nvrtc_compiles_to_cubin_where_available: libnvrtc cannot be loaded");
        return;
    }
    let include = LoadOptions::default().cuda_include_dirs;
    if !include.iter().any(|d| d.join("cuda_bf16.h").is_file()) {
        println!("SKIP nvrtc_compiles_to_cubin_where_available: no cuda_bf16.h in {include:?}");
        return;
    }
    use fluxc_runtime::compile::{cached_cubin, compile_cubin, nvrtc_options, CubinOrigin};
    let options = nvrtc_options("sm_90a", &include);
    let (cubin, _log) = compile_cubin(KERNELS, "sm_90a", &options).unwrap();
    assert_eq!(&cubin[..4], b"\x7fELF", "a CUBIN is an ELF image");

    let err = compile_cubin("extern \"C\" __global__ void k( {", "sm_90a", &options).unwrap_err();
    assert!(matches!(err, RuntimeError::Compile { .. }), "{err}");
    assert_contains(&err.to_string(), &["sm_90a", "kernels.cu", "error"]);

    let tmp = TempDir::new().unwrap();
    let (first, origin) =
        cached_cubin(KERNELS, "sm_90a", &options, 13000, Some(tmp.path()), |_| {}).unwrap();
    assert!(
        matches!(origin, CubinOrigin::Compiled(Some(_))),
        "{origin:?}"
    );
    let (second, origin) =
        cached_cubin(KERNELS, "sm_90a", &options, 13000, Some(tmp.path()), |_| {}).unwrap();
    assert!(matches!(origin, CubinOrigin::Cache(_)), "{origin:?}");
    assert_eq!(first, second);
}
