//! fp8 on the GPU, end to end through `Engine::load`: weights quantized by
//! the runtime's kernels must be bit-identical to the host derivation
//! (`LoadOptions::quantize_on_gpu = false`), and cuBLASLt fp8 GEMMs with
//! outer-vector and per-tensor scales must compute
//! `D[i, j] = (op(A)·op(B))[i, j] · a[i] · b[j] + bias[i]`. Also checks that
//! the scratch region starts zeroed, and that the quantized-weights cache
//! (`LoadOptions::save_quantized`) reloads bit-identical weights without
//! quantizing, and is ignored when corrupt or stale.
//!
//! Needs an sm_90 GPU with the CUDA 13 libraries and headers (set
//! `LD_LIBRARY_PATH` and `FLUXC_CUDA_INCLUDE`); anywhere else it says why it
//! skips and passes.

use std::collections::BTreeMap;
use std::path::Path;

use fluxc_artifact::{
    content_hash, files, Binding, Buffer, CheckpointLayout, ElemType, Fp8Format, Gemm,
    GemmEpilogue, GemmScales, Manifest, Region, ScaleMode, Schedule, Step, Tensor, WeightEntry,
    WeightSource, FORMAT_VERSION,
};
use fluxc_runtime::convert::{decode, encode};
use fluxc_runtime::{fp8_cache, Engine, Fp8Origin, LoadOptions, RuntimeError};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tempfile::TempDir;

/// Output features (rows of D), input features, tokens (columns of D).
const M: u64 = 32;
const K: u64 = 64;
const N: u64 = 16;

/// `kernels.cu` of an artifact without generated kernels.
const KERNELS: &str = "extern \"C\" __global__ void fluxc_unused() {}\n";

/// `y = (x8 · w8ᵀ) · sx · sw + bias` with outer-vector scales, and
/// `yt = (x8 · w8tᵀ) · sx[0] · swt` with per-tensor scales.
fn schedule() -> Schedule {
    use ElemType::{Bf16, F8e4m3, F32, I32};
    use Region::{Arena, Scratch, Weights};
    let buffers = vec![
        Buffer::new(0, "w8", F8e4m3, vec![M, K], Weights, 0),
        Buffer::new(1, "sw", F32, vec![M, 1], Weights, 2048),
        Buffer::new(2, "w8t", F8e4m3, vec![M, K], Weights, 2304),
        Buffer::new(3, "swt", F32, vec![1], Weights, 4352),
        Buffer::new(4, "wf", F8e4m3, vec![M, K], Weights, 4608),
        Buffer::new(5, "bias", Bf16, vec![M], Weights, 6656),
        Buffer::new(6, "x8", F8e4m3, vec![N, K], Arena, 0),
        Buffer::new(7, "sx", F32, vec![N], Arena, 1024),
        Buffer::new(8, "y", Bf16, vec![N, M], Arena, 1280),
        Buffer::new(9, "yt", Bf16, vec![N, M], Arena, 2304),
        Buffer::new(10, "counters", I32, vec![4], Scratch, 0),
    ];
    let gemm = |name: &str, a, d, scales, bias| {
        Step::Gemm(Gemm {
            name: name.into(),
            dtype: F8e4m3,
            trans_a: true,
            trans_b: false,
            m: M,
            n: N,
            k: K,
            a: Tensor::of(a),
            lda: K,
            b: Tensor::of(6),
            ldb: K,
            d: Tensor::of(d),
            ldd: M,
            bias,
            epilogue: if bias.is_some() {
                GemmEpilogue::Bias
            } else {
                GemmEpilogue::Default
            },
            d_dtype: Some(Bf16),
            scales: Some(scales),
            fast_accumulation: false,
            algo: None,
            c: None,
        })
    };
    let outer = GemmScales {
        mode: ScaleMode::OuterVector,
        a: Tensor::of(1),
        b: Tensor::of(7),
    };
    let tensor = GemmScales {
        mode: ScaleMode::Tensor,
        a: Tensor::of(3),
        b: Tensor::of(7),
    };
    Schedule {
        arena_bytes: 4096,
        weight_bytes: 8192,
        scratch_bytes: 256,
        gemm_workspace_bytes: 32 << 20,
        buffers,
        inputs: ["x8", "sx"]
            .iter()
            .zip([6, 7])
            .map(|(n, b)| Binding {
                name: n.to_string(),
                buffer: b,
            })
            .collect(),
        outputs: ["y", "yt"]
            .iter()
            .zip([8, 9])
            .map(|(n, b)| Binding {
                name: n.to_string(),
                buffer: b,
            })
            .collect(),
        steps: vec![
            gemm("outer", 0, 8, outer, Some(Tensor::of(5))),
            gemm("tensor", 2, 9, tensor, None),
        ],
    }
}

fn manifest(schedule_json: &[u8]) -> Manifest {
    let t = WeightSource::tensor;
    let quant = |of: WeightSource, per_row| WeightSource::Fp8Quantize {
        of: Box::new(of),
        format: Fp8Format::E4m3,
        per_row,
    };
    let scale = |per_row| WeightSource::Fp8Scale {
        of: Box::new(t("w")),
        format: Fp8Format::E4m3,
        per_row,
    };
    let weights = [
        ("w8", 0, quant(t("w"), true)),
        ("sw", 1, scale(true)),
        ("w8t", 2, quant(t("w"), false)),
        ("swt", 3, scale(false)),
        // Not a stored range: its input is derived on the host in f32.
        ("wf", 4, quant(t("w").swap_halves(), true)),
        ("bias", 5, t("b")),
    ]
    .into_iter()
    .map(|(name, buffer, source)| WeightEntry {
        name: name.into(),
        buffer,
        sources: BTreeMap::from([("diffusers".to_string(), source)]),
    })
    .collect();
    Manifest {
        format_version: FORMAT_VERSION,
        compiler: "hand-written".into(),
        model_name: "fp8 toy".into(),
        content_hash: content_hash(schedule_json, KERNELS.as_bytes()),
        arch: "sm_90a".into(),
        layouts: vec![CheckpointLayout {
            name: "diffusers".into(),
            strip_prefixes: vec![],
        }],
        weights,
    }
}

fn weight(o: u64, k: u64) -> f32 {
    // Rows of different magnitudes, so per-row scales differ.
    ((o * 7) as f32 + k as f32 * 0.37).sin() * (1.0 + o as f32) / 8.0
}

fn write_artifact(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let art = dir.join("artifact");
    std::fs::create_dir_all(&art).unwrap();
    let schedule_json = serde_json::to_vec_pretty(&schedule()).unwrap();
    std::fs::write(art.join(files::SCHEDULE), &schedule_json).unwrap();
    std::fs::write(art.join(files::KERNELS), KERNELS).unwrap();
    let manifest = serde_json::to_vec_pretty(&manifest(&schedule_json)).unwrap();
    std::fs::write(art.join(files::MANIFEST), manifest).unwrap();

    let w: Vec<f32> = (0..M)
        .flat_map(|o| (0..K).map(move |k| weight(o, k)))
        .collect();
    let b: Vec<f32> = (0..M).map(|o| o as f32 * 0.1 - 1.0).collect();
    let (w, b) = (encode(ElemType::Bf16, &w), encode(ElemType::Bf16, &b));
    let views = BTreeMap::from([
        (
            "w",
            TensorView::new(Dtype::BF16, vec![M as usize, K as usize], &w).unwrap(),
        ),
        (
            "b",
            TensorView::new(Dtype::BF16, vec![M as usize], &b).unwrap(),
        ),
    ]);
    let ckpt = dir.join("fp8.safetensors");
    safetensors::serialize_to_file(&views, None, &ckpt).unwrap();
    (art, ckpt)
}

fn options(quantize_on_gpu: bool) -> LoadOptions {
    LoadOptions {
        progress: true,
        cache_dir: None,
        capture_graph: false,
        quantize_on_gpu,
        ..LoadOptions::default()
    }
}

/// The buffer named `name`.
fn id(engine: &Engine, name: &str) -> u32 {
    engine
        .schedule()
        .buffers
        .iter()
        .find(|b| b.name == name)
        .unwrap()
        .id
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn fp8_weights_and_gemms_on_the_gpu() {
    if !fluxc_runtime::cuda::driver_library_present() {
        println!("SKIP fp8_weights_and_gemms_on_the_gpu: no CUDA driver library here");
        return;
    }
    let include = LoadOptions::default().cuda_include_dirs;
    if !include.iter().any(|d| d.join("cuda_fp8.h").is_file()) {
        println!("SKIP fp8_weights_and_gemms_on_the_gpu: no cuda_fp8.h in {include:?}");
        return;
    }
    let tmp = TempDir::new().unwrap();
    let (art, ckpt) = write_artifact(tmp.path());
    let mut gpu = match Engine::load(&art, &ckpt, &options(true)) {
        Err(RuntimeError::NoCuda(why)) => {
            println!("SKIP fp8_weights_and_gemms_on_the_gpu: {why}");
            return;
        }
        other => other.unwrap(),
    };
    let host = Engine::load(&art, &ckpt, &options(false)).unwrap();

    // Bit-identical weights, whichever side quantized them.
    for name in ["w8", "sw", "w8t", "swt", "wf", "bias"] {
        let (g, h) = (
            gpu.read_buffer(id(&gpu, name)).unwrap(),
            host.read_buffer(id(&host, name)).unwrap(),
        );
        assert_eq!(bits(&g), bits(&h), "weight `{name}`");
    }
    let sw = gpu.read_buffer(id(&gpu, "sw")).unwrap();
    assert!(sw.windows(2).any(|p| p[0] != p[1]), "per-row scales differ");
    assert_eq!(
        gpu.read_buffer(id(&gpu, "counters")).unwrap(),
        vec![0.0; 4],
        "scratch starts zeroed"
    );

    // The GEMMs against a host reference from the same fp8 operands.
    let x: Vec<f32> = (0..N)
        .flat_map(|t| (0..K).map(move |k| ((t * 3) as f32 + k as f32 * 0.11).sin() * 4.0))
        .collect();
    let sx: Vec<f32> = (0..N).map(|t| 0.5 + t as f32 * 0.01).collect();
    gpu.set_input("x8", &x).unwrap();
    gpu.set_input("sx", &sx).unwrap();
    gpu.run().unwrap();
    let x8 = decode(ElemType::F8e4m3, &encode(ElemType::F8e4m3, &x));
    let read = |name| gpu.read_buffer(id(&gpu, name)).unwrap();
    let (w8, w8t, swt, bias) = (read("w8"), read("w8t"), read("swt"), read("bias"));
    let dot = |w: &[f32], o: u64, t: u64| -> f64 {
        (0..K)
            .map(|k| f64::from(w[(o * K + k) as usize]) * f64::from(x8[(t * K + k) as usize]))
            .sum()
    };
    let check = |name: &str, got: &[f32], want: &dyn Fn(u64, u64) -> f64| {
        for t in 0..N {
            for o in 0..M {
                let (g, w) = (f64::from(got[(t * M + o) as usize]), want(o, t));
                assert!(
                    (g - w).abs() <= 0.01 * w.abs() + 0.02,
                    "{name}[{t}, {o}] = {g}, expected {w}"
                );
            }
        }
    };
    check("y", &gpu.output("y").unwrap(), &|o, t| {
        dot(&w8, o, t) * f64::from(sw[o as usize]) * f64::from(sx[t as usize])
            + f64::from(bias[o as usize])
    });
    check("yt", &gpu.output("yt").unwrap(), &|o, t| {
        dot(&w8t, o, t) * f64::from(swt[0]) * f64::from(sx[0])
    });
}

/// Whether this machine can run the GPU tests; says why not.
fn gpu_ready(test: &str) -> bool {
    if !fluxc_runtime::cuda::driver_library_present() {
        println!("SKIP {test}: no CUDA driver library here");
        return false;
    }
    let include = LoadOptions::default().cuda_include_dirs;
    if !include.iter().any(|d| d.join("cuda_fp8.h").is_file()) {
        println!("SKIP {test}: no cuda_fp8.h in {include:?}");
        return false;
    }
    true
}

const WEIGHTS: [&str; 6] = ["w8", "sw", "w8t", "swt", "wf", "bias"];

/// Every weight's bits.
fn weight_bits(engine: &Engine) -> Vec<Vec<u32>> {
    WEIGHTS
        .iter()
        .map(|name| bits(&engine.read_buffer(id(engine, name)).unwrap()))
        .collect()
}

#[test]
fn quantized_weights_cache_skips_quantization_and_reloads_the_same_bits() {
    const TEST: &str = "quantized_weights_cache_skips_quantization_and_reloads_the_same_bits";
    if !gpu_ready(TEST) {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let (art, ckpt) = write_artifact(tmp.path());
    let cache = art.join(fp8_cache::FILE);
    let save = LoadOptions {
        save_quantized: true,
        ..options(true)
    };
    let first = match Engine::load(&art, &ckpt, &save) {
        Err(RuntimeError::NoCuda(why)) => {
            println!("SKIP {TEST}: {why}");
            return;
        }
        other => other.unwrap(),
    };
    assert_eq!(first.fp8_origin(), &Fp8Origin::QuantizedOnGpu);
    assert!(
        cache.is_file(),
        "--save-quantized wrote {}",
        cache.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&art)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Loaded again: every fp8 weight from the cache, nothing quantized,
    // the same bits as quantizing on the GPU and deriving on the host.
    let second = Engine::load(&art, &ckpt, &options(true)).unwrap();
    assert_eq!(second.fp8_origin(), &Fp8Origin::Cache(cache.clone()));
    let host = Engine::load(
        &art,
        &ckpt,
        &LoadOptions {
            use_quantized_cache: false,
            ..options(false)
        },
    )
    .unwrap();
    assert_eq!(host.fp8_origin(), &Fp8Origin::DerivedOnHost);
    let want = weight_bits(&first);
    assert_eq!(weight_bits(&second), want);
    assert_eq!(weight_bits(&host), want);
    drop((first, second, host));

    // Saving when the cache is current leaves it as it is.
    let before = std::fs::read(&cache).unwrap();
    let again = Engine::load(&art, &ckpt, &save).unwrap();
    assert_eq!(again.fp8_origin(), &Fp8Origin::Cache(cache.clone()));
    assert_eq!(std::fs::read(&cache).unwrap(), before);
    drop(again);

    // A flipped bit in the last tensor: found while loading, abandoned,
    // the weights quantized instead.
    let mut flipped = before.clone();
    *flipped.last_mut().unwrap() ^= 0x01;
    std::fs::write(&cache, &flipped).unwrap();
    let corrupt = Engine::load(&art, &ckpt, &options(true)).unwrap();
    assert_eq!(corrupt.fp8_origin(), &Fp8Origin::QuantizedOnGpu);
    assert_eq!(weight_bits(&corrupt), want);
    drop(corrupt);

    // A truncated cache is refused before anything is read from it.
    std::fs::write(&cache, &before[..before.len() / 2]).unwrap();
    let truncated = Engine::load(&art, &ckpt, &options(true)).unwrap();
    assert_eq!(truncated.fp8_origin(), &Fp8Origin::QuantizedOnGpu);
    assert_eq!(weight_bits(&truncated), want);
    drop(truncated);

    // A checkpoint modified after the cache was written: stale, ignored.
    std::fs::write(&cache, &before).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&ckpt)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let stale = Engine::load(&art, &ckpt, &options(true)).unwrap();
    assert_eq!(stale.fp8_origin(), &Fp8Origin::QuantizedOnGpu);
    assert_eq!(weight_bits(&stale), want);
}
