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
    for input in engine.inputs().to_vec() {
        let n = engine.input_buffer(&input.name)?.elements() as usize;
        // Any deterministic values in [-1, 1] will do for a demonstration.
        let values: Vec<f32> = (0..n).map(|j| ((j % 17) as f32 - 8.0) / 8.0).collect();
        engine.set_input(&input.name, &values)?;
    }
    engine.run()?;
    for output in engine.outputs().to_vec() {
        let values = engine.output(&output.name)?;
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let rms = (values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n).sqrt();
        println!(
            "{}: {} values, mean {mean:.6}, rms {rms:.6}",
            output.name,
            values.len()
        );
    }
    Ok(())
}
