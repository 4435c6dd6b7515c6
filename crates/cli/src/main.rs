//! `fluxc`: the command line of the FLUX.1 compiler.
//!
//! Each subcommand lives in its own module; this file only parses arguments,
//! dispatches, and renders errors (`error: ...` on stderr, exit code 1; usage
//! errors exit with 2 through clap).

mod check;
mod compile;
mod kernel_tuning;
mod layout;
mod run;
mod tune;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ahead-of-time compiler for the FLUX.1 text-to-image models on NVIDIA Hopper.
#[derive(Parser)]
#[command(name = "fluxc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a model.toml, build its graph and print a summary
    /// (ops by kind, parameters, GEMM and attention FLOPs per forward).
    Check {
        /// Path to the model.toml.
        model: PathBuf,
    },
    /// Compile a model.toml into an artifact: graph, passes, kernels and
    /// schedule (no GPU needed).
    Compile {
        /// Path to the model.toml.
        model: PathBuf,
        /// Directory to write the artifact to.
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Print the IR after this pass (dce, cse, simplify, conv1x1_as_mm,
        /// conv_im2col, fuse_qkv, fp8, hoist_weights, fusion).
        #[arg(long, value_name = "PASS")]
        dump_after: Option<String>,
        /// Give every buffer its own memory (keeps intermediates readable).
        #[arg(long)]
        no_memory_reuse: bool,
        /// Take the kernel launches and GEMM algorithms recorded in this
        /// tuning cache (with --tune: also where measurements go; default
        /// ./tuning.json).
        #[arg(long, value_name = "FILE")]
        tuning_cache: Option<PathBuf>,
        /// Tune on this machine's GPU: coordinate descent over every
        /// generated kernel's launch configuration, and cuBLASLt's candidate
        /// algorithms for every GEMM (what the cache holds is not measured
        /// again).
        #[arg(long)]
        tune: bool,
        /// With --tune: print each kernel's and GEMM's default and tuned time.
        #[arg(long)]
        report: bool,
    },
    /// Run a compiled artifact on the GPU with real weights: one forward,
    /// outputs written, and optionally timed CUDA graph replays.
    Run {
        /// The artifact directory (written by `fluxc compile -o`).
        artifact: PathBuf,
        /// The checkpoint: a diffusers directory or a .safetensors file.
        #[arg(long, value_name = "CHECKPOINT")]
        weights: PathBuf,
        /// Safetensors file with every input, named as the schedule names
        /// them (default: a deterministic pattern).
        #[arg(long, value_name = "FILE")]
        inputs: Option<PathBuf>,
        /// Write the outputs as f32 safetensors here.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Time this many graph replays.
        #[arg(long, default_value_t = 0)]
        replays: usize,
        /// Untimed replays before the timed ones.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Launch the steps one by one (no CUDA graph), waiting after each.
        #[arg(long)]
        eager: bool,
        /// Write the timing as JSON here.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Time every step of one forward and print where the time goes.
        #[arg(long)]
        profile: bool,
        /// 4-D tensors in --inputs and --output are NCHW (PyTorch's layout,
        /// as diffusers writes latents and images); fluxc's image tensors
        /// are channels-last and are permuted on the way in and out.
        #[arg(long)]
        nchw: bool,
    },
    /// Time cuBLASLt's candidate algorithms for every GEMM of an artifact on
    /// this machine's GPU and record the fastest in the artifact.
    Tune {
        /// The artifact directory (written by `fluxc compile -o`).
        artifact: PathBuf,
        /// Heuristic candidates timed per GEMM.
        #[arg(long, default_value_t = 8)]
        candidates: usize,
        /// Add the measurements to this tuning cache (tuning.json).
        #[arg(long, value_name = "FILE")]
        cache: Option<PathBuf>,
        /// Print every GEMM's default and tuned time.
        #[arg(long)]
        report: bool,
        /// Measure only; leave the artifact unchanged.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { model } => check::run(&model),
        Command::Compile {
            model,
            out,
            dump_after,
            no_memory_reuse,
            tuning_cache,
            tune,
            report,
        } => compile::run(&compile::CompileArgs {
            model: &model,
            out: out.as_deref(),
            dump_after: dump_after.as_deref(),
            no_memory_reuse,
            tuning_cache: tuning_cache.as_deref(),
            tune,
            report,
        }),
        Command::Run {
            artifact,
            weights,
            inputs,
            output,
            replays,
            warmup,
            eager,
            json,
            profile,
            nchw,
        } => run::run(&run::RunArgs {
            artifact: &artifact,
            weights: &weights,
            inputs: inputs.as_deref(),
            output: output.as_deref(),
            replays,
            warmup,
            eager,
            json: json.as_deref(),
            profile,
            nchw,
        }),
        Command::Tune {
            artifact,
            candidates,
            cache,
            report,
            dry_run,
        } => tune::run(&tune::TuneArgs {
            artifact: &artifact,
            candidates,
            cache: cache.as_deref(),
            report,
            dry_run,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = std::error::Error::source(&*err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
