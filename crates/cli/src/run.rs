//! `fluxc run <artifact> --weights <checkpoint>`: load a compiled artifact on
//! the GPU with real weights, run one forward, write the outputs, and time
//! graph replays.
//!
//! Inputs come from `--inputs io.safetensors` (tensors named as the
//! schedule's inputs, any stored dtype, converted to f32; checked against the
//! schedule before the GPU is touched); without it every input is filled
//! with a deterministic pattern. `--output` writes every output as f32
//! safetensors. `--replays N` times N graph replays after `--warmup` untimed
//! ones and prints GPU milliseconds per forward and host microseconds per
//! launch; `--json` writes them too. When the inputs file also holds a
//! tensor named like an output (a reference, as the diffusers fixtures
//! do), the output's relative L2 error against it is printed. `--eager`
//! records no CUDA graph: steps run one by one, each waited for, so a
//! failing step is named. `--save-quantized` writes the quantized fp8
//! weights next to the artifact (`weights.fp8.safetensors`); every later run
//! takes them from there while the artifact and the checkpoint are
//! unchanged (`fluxc_runtime::fp8_cache`). `--nchw`
//! reads 4-D inputs and writes (and compares) 4-D outputs in PyTorch's NCHW
//! layout: a VAE artifact takes channels-last latents `z` `[N, h, w, C]`
//! and writes a channels-last image, while diffusers' latents and images
//! (and the fixtures) are NCHW.

use std::collections::BTreeMap;
use std::path::Path;

use fluxc_checkpoint::HostTensor;
use fluxc_runtime::{Artifact, Engine, LoadOptions, Stats, Timing};

use crate::layout::{nchw_shape, nchw_to_nhwc, nhwc_to_nchw};

/// What `fluxc run` was asked to do.
pub struct RunArgs<'a> {
    /// The artifact directory.
    pub artifact: &'a Path,
    /// The checkpoint (file or diffusers directory).
    pub weights: &'a Path,
    /// Safetensors file with the inputs.
    pub inputs: Option<&'a Path>,
    /// Where to write the outputs.
    pub output: Option<&'a Path>,
    /// Timed replays.
    pub replays: usize,
    /// Untimed replays before them.
    pub warmup: usize,
    /// Launch steps one by one instead of as a graph.
    pub eager: bool,
    /// Where to write the timing as JSON.
    pub json: Option<&'a Path>,
    /// Time every step and print the breakdown.
    pub profile: bool,
    /// Write the quantized fp8 weights next to the artifact.
    pub save_quantized: bool,
    /// 4-D inputs and outputs are NCHW in the files.
    pub nchw: bool,
}

/// Runs the artifact.
pub fn run(args: &RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Everything checkable without a GPU first.
    let artifact = Artifact::load(args.artifact)?;
    let (inputs, references) = match args.inputs {
        Some(path) => {
            let (inputs, rest) = read_inputs(path, &artifact, args.nchw)?;
            (Some(inputs), rest)
        }
        None => (None, BTreeMap::new()),
    };
    drop(artifact);

    let options = LoadOptions {
        capture_graph: !args.eager,
        save_quantized: args.save_quantized,
        ..LoadOptions::default()
    };
    let mut engine = Engine::load(args.artifact, args.weights, &options)?;
    if inputs.is_none() {
        eprintln!("note: no --inputs given: every input is filled with a deterministic pattern");
    }
    for (i, binding) in engine.inputs().to_vec().iter().enumerate() {
        let data = match &inputs {
            Some(map) => map[&binding.name].clone(),
            None => pattern(i, engine.input_buffer(&binding.name)?.elements() as usize),
        };
        engine.set_input(&binding.name, &data)?;
    }
    if args.eager {
        engine.run_eager()?;
    } else {
        engine.run()?;
    }

    let mut outputs = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for binding in engine.outputs().to_vec() {
        let shape: Vec<usize> = engine
            .output_buffer(&binding.name)?
            .shape
            .iter()
            .map(|&d| d as usize)
            .collect();
        let mut values = engine.output(&binding.name)?;
        let mut shape = shape;
        if args.nchw && shape.len() == 4 {
            values = nhwc_to_nchw(&shape, &values);
            shape = nchw_shape(&shape);
        }
        println!("output {} {:?}: {}", binding.name, shape, summary(&values));
        if let Some(reference) = references.get(&binding.name) {
            if reference.shape == shape {
                let error = rel_l2(&values, &reference.data);
                println!("  relative L2 error vs the reference in the inputs file: {error:e}");
                errors.insert(binding.name.clone(), error);
            } else {
                println!(
                    "  (the inputs file holds `{}` of shape {:?}; not compared)",
                    binding.name, reference.shape
                );
            }
        }
        outputs.insert(binding.name.clone(), (shape, values));
    }
    if let Some(path) = args.output {
        write_outputs(path, &outputs)?;
        println!("wrote {} output(s) to {}", outputs.len(), path.display());
    }

    let timing = if args.replays > 0 {
        let t = engine.time_replays(args.warmup, args.replays)?;
        print_timing(&t, args, engine.has_graph());
        Some(t)
    } else {
        None
    };
    let profile = if args.profile {
        let ms = engine.profile_steps()?;
        let rows = profile_rows(engine.schedule(), &ms);
        print_profile(&rows, ms.iter().sum());
        Some((rows, ms))
    } else {
        None
    };
    let (profile, step_ms) = profile.unzip();
    if let Some(path) = args.json {
        let json = serde_json::json!({
            "profile": profile,
            "step_ms": step_ms,
            "artifact": args.artifact.display().to_string(),
            "model": engine.manifest().model_name,
            "device": engine.device_name(),
            "layout": engine.layout(),
            "graph": engine.has_graph(),
            "warmup": args.warmup,
            "replays": args.replays,
            "rel_l2": errors,
            "gpu_ms": timing.as_ref().and_then(Timing::gpu),
            "launch_us": timing.as_ref().and_then(Timing::launch),
            "gpu_ms_all": timing.as_ref().map(|t| &t.gpu_ms),
            "launch_us_all": timing.as_ref().map(|t| &t.launch_us),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    }
    Ok(())
}

/// Per-step time summed by what the step runs (`gemm`, `attention`, or the
/// kernel's name), largest first: (what, steps, total ms).
fn profile_rows(schedule: &fluxc_artifact::Schedule, ms: &[f64]) -> Vec<(String, usize, f64)> {
    use fluxc_artifact::Step;
    let mut by_kind: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (step, &t) in schedule.steps.iter().zip(ms) {
        let kind = match step {
            Step::Gemm(_) => "gemm (cuBLASLt)".to_string(),
            Step::Attention(a) => a.kernel.clone(),
            Step::Launch(l) => l.kernel.clone(),
            Step::Copy(_) => "copy".to_string(),
            Step::Conv(_) => "convolution (cuDNN)".to_string(),
        };
        let entry = by_kind.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += t;
    }
    let mut rows: Vec<(String, usize, f64)> =
        by_kind.into_iter().map(|(k, (n, t))| (k, n, t)).collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    rows
}

fn print_profile(rows: &[(String, usize, f64)], total: f64) {
    println!("profile: {total:.2} ms in steps run one by one (no graph)");
    for (kind, n, t) in rows {
        println!("  {t:9.3} ms {:5.1}%  {n:4} x {kind}", 100.0 * t / total);
    }
}

/// Input data by name, and the other tensors of the inputs file.
type Inputs = (BTreeMap<String, Vec<f32>>, BTreeMap<String, HostTensor>);

/// The inputs in `path`, one per schedule input, checked against the
/// schedule's shapes (4-D ones stored NCHW with `nchw`, and then permuted
/// to the artifact's channels-last layout); and the file's other tensors.
pub(crate) fn read_inputs(
    path: &Path,
    artifact: &Artifact,
    nchw: bool,
) -> Result<Inputs, Box<dyn std::error::Error>> {
    let mut tensors = fluxc_checkpoint::read_safetensors_any(path)?;
    let mut out = BTreeMap::new();
    for binding in &artifact.schedule.inputs {
        let buffer = artifact
            .buffer(binding.buffer)
            .ok_or_else(|| format!("input `{}` names no buffer", binding.name))?;
        let expected: Vec<usize> = buffer.shape.iter().map(|&d| d as usize).collect();
        let Some(tensor) = tensors.remove(&binding.name) else {
            let held: Vec<String> = tensors.keys().map(|k| format!("`{k}`")).collect();
            return Err(format!(
                "input `{}` (shape {expected:?}) is missing from `{}` (it holds: {})",
                binding.name,
                path.display(),
                if held.is_empty() {
                    "nothing".into()
                } else {
                    held.join(", ")
                }
            )
            .into());
        };
        let image = expected.len() == 4;
        let stored = if nchw && image {
            nchw_shape(&expected)
        } else {
            expected.clone()
        };
        if tensor.shape != stored {
            let hint = if !nchw && image && tensor.shape == nchw_shape(&expected) {
                " (NHWC); it looks NCHW: pass --nchw to have it permuted"
            } else if nchw && image {
                " (NCHW, as --nchw says)"
            } else {
                ""
            };
            return Err(format!(
                "input `{}` in `{}` has shape {:?}, the artifact expects {stored:?}{hint}",
                binding.name,
                path.display(),
                tensor.shape
            )
            .into());
        }
        let data = if nchw && image {
            nchw_to_nhwc(&tensor.shape, &tensor.data)
        } else {
            tensor.data
        };
        out.insert(binding.name.clone(), data);
    }
    Ok((out, tensors))
}

/// `‖a − b‖ / ‖b‖`.
pub(crate) fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        diff += (f64::from(x) - f64::from(y)).powi(2);
        norm += f64::from(y).powi(2);
    }
    (diff / norm).sqrt()
}

/// Writes `outputs` as f32 tensors of one safetensors file.
fn write_outputs(
    path: &Path,
    outputs: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let bytes: BTreeMap<&String, Vec<u8>> = outputs
        .iter()
        .map(|(name, (_, values))| (name, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let mut views = BTreeMap::new();
    for (name, (shape, _)) in outputs {
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            shape.clone(),
            &bytes[name],
        )?;
        views.insert(name.clone(), view);
    }
    safetensors::serialize_to_file(&views, None, path)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()).into())
}

/// Prints the timing table.
fn print_timing(t: &Timing, args: &RunArgs, graph: bool) {
    let line = |label: &str, s: Option<Stats>, unit: &str| match s {
        Some(s) => println!(
            "  {label}: median {:.3} {unit}, min {:.3} {unit}, max {:.3} {unit}",
            s.median, s.min, s.max
        ),
        None => println!("  {label}: no measurements"),
    };
    println!(
        "timing: {} replays after {} warm-up ({})",
        args.replays,
        args.warmup,
        if graph {
            "CUDA graph"
        } else {
            "eager launches"
        }
    );
    line("GPU ms per forward", t.gpu(), "ms");
    line("host µs per launch", t.launch(), "µs");
}

/// A deterministic, non-constant pattern in [-1, 1] for input `index`.
pub(crate) fn pattern(index: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|j| {
            ((j as f32 * 0.618_034 + index as f32 * 1.7).sin() * 0.5
                + 0.25 * (j as f32 * 0.01).cos())
            .clamp(-1.0, 1.0)
        })
        .collect()
}

/// Mean, standard deviation, range and non-finite count of `values`.
fn summary(values: &[f32]) -> String {
    let finite: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| f64::from(v))
        .collect();
    let n = finite.len().max(1) as f64;
    let mean = finite.iter().sum::<f64>() / n;
    let var = finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "mean {mean:.6}, std {:.6}, min {min:.6}, max {max:.6}, non-finite {}",
        var.sqrt(),
        values.len() - finite.len()
    )
}
