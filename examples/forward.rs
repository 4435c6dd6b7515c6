//! The smallest application of the fluxc runtime: load a compiled artifact
//! with a checkpoint's weights, fill every input with a deterministic
//! pattern, run one forward, and print statistics of every output.
//!
//! ```sh
//! cargo run --release --example forward -- out/flux-schnell /models/FLUX.1-schnell
//! ```
//!
//! Without a GPU (or the CUDA libraries) it prints why and exits with 1.

use std::path::PathBuf;
use std::process::ExitCode;

use fluxc::runtime::{Engine, LoadOptions, RuntimeError};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [artifact, checkpoint] = args.as_slice() else {
        eprintln!("usage: forward <artifact-dir> <checkpoint>");
        return ExitCode::from(2);
    };
    match run(PathBuf::from(artifact), PathBuf::from(checkpoint)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(artifact: PathBuf, checkpoint: PathBuf) -> Result<(), RuntimeError> {
    let mut engine = Engine::load(&artifact, &checkpoint, &LoadOptions::default())?;
    let inputs = engine.inputs().to_vec();
    for (i, input) in inputs.iter().enumerate() {
        let n = engine.input_buffer(&input.name)?.elements() as usize;
        engine.set_input(&input.name, &pattern(i, n))?;
    }
    engine.run()?;
    for output in engine.outputs().to_vec() {
        let shape = engine.output_buffer(&output.name)?.shape.clone();
        let values = engine.output(&output.name)?;
        println!("{} {:?}: {}", output.name, shape, summary(&values));
    }
    Ok(())
}

/// A deterministic, non-constant pattern in [-1, 1] for input `index`.
fn pattern(index: usize, n: usize) -> Vec<f32> {
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
