//! `fluxc`: the command line of the FLUX.1 compiler.
//!
//! Each subcommand lives in its own module; this file only parses arguments,
//! dispatches, and renders errors (`error: ...` on stderr, exit code 1; usage
//! errors exit with 2 through clap).

mod ab;
mod attention_tuning;
mod candidate_check;
mod check;
mod compile;
mod compile_pipeline;
mod compile_tuning;
mod fp8_choice;
mod generate;
mod kernel_tuning;
mod layout;
mod run;
mod tune;
mod tune_settings;

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
    /// (ops by kind, parameters, GEMM and attention FLOPs per forward, what
    /// fp8 quantizes).
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
        /// tuning cache (with --tune: also where measurements go). Overrides
        /// [autotune] cache; with --tune and neither, ./tuning.json.
        #[arg(long, value_name = "FILE")]
        tuning_cache: Option<PathBuf>,
        /// Tune on this machine's GPU: coordinate descent over every
        /// generated kernel's launch configuration, and cuBLASLt's candidate
        /// algorithms for every GEMM (what the cache holds is not measured
        /// again), as [autotune] in the model.toml says.
        #[arg(long)]
        tune: bool,
        /// With --tune: print each kernel's and GEMM's default and tuned time.
        #[arg(long)]
        report: bool,
        /// With --tune: stop tuning after this many seconds; what is left
        /// keeps its defaults (overrides [autotune] budget_s, default 120).
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        tune_budget: Option<f64>,
        /// With --tune: search (true) or take the cache and the defaults
        /// without measuring (false); overrides [autotune] coordinate_descent.
        #[arg(long, value_name = "BOOL")]
        coordinate_descent: Option<bool>,
        /// With --tune: after single-field descent, also try several fields
        /// changed at once; overrides [autotune] check_all_directions.
        #[arg(long, value_name = "BOOL")]
        check_all_directions: Option<bool>,
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
        /// Write the quantized fp8 weights and their scales next to the
        /// artifact (weights.fp8.safetensors), stamped with the artifact
        /// and checkpoint they come from; later runs read them from there
        /// instead of quantizing.
        #[arg(long)]
        save_quantized: bool,
        /// 4-D tensors in --inputs and --output are NCHW (PyTorch's layout,
        /// as diffusers writes latents and images); fluxc's image tensors
        /// are channels-last and are permuted on the way in and out.
        #[arg(long)]
        nchw: bool,
    },
    /// Time two artifacts of the same model against each other on the GPU:
    /// both loaded in one process with the same weights and inputs, timed in
    /// alternating rounds so clock drift falls on both; prints the paired
    /// difference B − A per round.
    Ab {
        /// The baseline artifact.
        a: PathBuf,
        /// The candidate artifact.
        b: PathBuf,
        /// The checkpoint both load: a diffusers directory or a .safetensors file.
        #[arg(long, value_name = "CHECKPOINT")]
        weights: PathBuf,
        /// Safetensors file with every input (default: a deterministic pattern).
        #[arg(long, value_name = "FILE")]
        inputs: Option<PathBuf>,
        /// Alternating rounds (A then B, B then A, ...).
        #[arg(long, default_value_t = 8)]
        rounds: usize,
        /// Timed graph replays per artifact and round.
        #[arg(long, default_value_t = 10)]
        replays: usize,
        /// Write the rounds and the verdict as JSON here.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Generate an image with a compiled pipeline (`fluxc compile
    /// <pipeline.toml> -o DIR`): the denoising loop and the VAE decode run
    /// as one CUDA graph; the image is written as PNG.
    Generate {
        /// The pipeline directory (pipeline.json, transformer/, vae/).
        pipeline: PathBuf,
        /// A diffusers pipeline directory with transformer/ and vae/.
        #[arg(long, value_name = "DIR")]
        weights: Option<PathBuf>,
        /// The transformer's checkpoint (a file or a diffusers directory),
        /// with --vae-weights instead of --weights.
        #[arg(long, value_name = "CHECKPOINT")]
        transformer_weights: Option<PathBuf>,
        /// The VAE's checkpoint (e.g. BFL's ae.safetensors).
        #[arg(long, value_name = "CHECKPOINT")]
        vae_weights: Option<PathBuf>,
        /// Safetensors with `prompt_embeds` [B, T, D] and
        /// `pooled_prompt_embeds` [B, P] (diffusers' encode_prompt).
        #[arg(long, value_name = "FILE")]
        embeds: PathBuf,
        /// Seed of the starting noise (drawn on the GPU).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The PNG to write.
        #[arg(short, long, value_name = "FILE.png")]
        out: PathBuf,
        /// Start from these latents (packed [B, tokens, 4C] or [B, C, H, W])
        /// instead of seeded noise.
        #[arg(long, value_name = "FILE")]
        latents_in: Option<PathBuf>,
        /// Write the final latents (packed, f32) here.
        #[arg(long, value_name = "FILE")]
        latents_out: Option<PathBuf>,
        /// Time this many more runs of the whole pipeline.
        #[arg(long, default_value_t = 0)]
        replays: usize,
        /// Launch the loop's steps directly instead of as one CUDA graph.
        #[arg(long)]
        eager: bool,
    },
    /// Time cuBLASLt's candidate algorithms for every GEMM of an artifact on
    /// this machine's GPU and record the fastest in the artifact.
    Tune {
        /// The artifact directory (written by `fluxc compile -o`).
        artifact: PathBuf,
        /// Heuristic candidates timed per GEMM.
        #[arg(long, default_value_t = 8)]
        candidates: usize,
        /// Then search cuBLASLt's algorithm configurations (id, tile,
        /// stages, split-K, swizzle, cluster shape) from the fastest,
        /// measuring at most this many per GEMM (0: no search).
        #[arg(long, default_value_t = fluxc_runtime::gemm_tuning::GEMM_SEARCH_MEASUREMENTS)]
        search_measurements: usize,
        /// Let that search also try several fields changed at once.
        #[arg(long)]
        check_all_directions: bool,
        /// Add the measurements to this tuning cache (tuning.json).
        #[arg(long, value_name = "FILE")]
        cache: Option<PathBuf>,
        /// Print every GEMM's default and tuned time.
        #[arg(long)]
        report: bool,
        /// Measure only; leave the artifact unchanged.
        #[arg(long)]
        dry_run: bool,
        /// Time each candidate after this many milliseconds of back-to-back
        /// launches, so at the clock the board's power limit leaves it (the
        /// FLUX forward runs at that limit; ~1000 reaches it). Not with
        /// --cache, whose entries are burst timings.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        sustain_ms: u32,
    },
}

fn main() -> ExitCode {
    restore_default_sigpipe();
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
            tune_budget,
            coordinate_descent,
            check_all_directions,
        } => compile::run(&compile::CompileArgs {
            model: &model,
            out: out.as_deref(),
            dump_after: dump_after.as_deref(),
            no_memory_reuse,
            tuning: tune_settings::TuneFlags {
                tune,
                cache: tuning_cache.as_deref(),
                budget_s: tune_budget,
                coordinate_descent,
                check_all_directions,
            },
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
            save_quantized,
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
            save_quantized,
            nchw,
        }),
        Command::Ab {
            a,
            b,
            weights,
            inputs,
            rounds,
            replays,
            json,
        } => ab::run(&ab::AbArgs {
            a: &a,
            b: &b,
            weights: &weights,
            inputs: inputs.as_deref(),
            rounds,
            replays,
            json: json.as_deref(),
        }),
        Command::Generate {
            pipeline,
            weights,
            transformer_weights,
            vae_weights,
            embeds,
            seed,
            out,
            latents_in,
            latents_out,
            replays,
            eager,
        } => generate::run(&generate::GenerateArgs {
            pipeline: &pipeline,
            weights: weights.as_deref(),
            transformer_weights: transformer_weights.as_deref(),
            vae_weights: vae_weights.as_deref(),
            embeds: &embeds,
            seed,
            out: &out,
            latents_in: latents_in.as_deref(),
            latents_out: latents_out.as_deref(),
            replays,
            eager,
        }),
        Command::Tune {
            artifact,
            candidates,
            search_measurements,
            check_all_directions,
            cache,
            report,
            dry_run,
            sustain_ms,
        } => tune::run(&tune::TuneArgs {
            artifact: &artifact,
            candidates,
            search_measurements,
            check_all_directions,
            cache: cache.as_deref(),
            report,
            dry_run,
            sustain_ms,
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

/// Lets a closed stdout end the process quietly, as in other command-line
/// tools (`fluxc check model.toml | head`), instead of a panic in `println!`:
/// Rust ignores SIGPIPE by default, which turns the closed pipe into an
/// error that `print!` panics on.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any other
    // thread exists, is async-signal-safe and affects nothing else.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
