//! `fluxc`: the command line of the FLUX.1 compiler.
//!
//! Each subcommand lives in its own module; this file only parses arguments,
//! dispatches, and renders errors (`error: ...` on stderr, exit code 1; usage
//! errors exit with 2 through clap).

mod check;
mod compile;

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
    /// Compile a model.toml: build the graph and run the pass pipeline.
    Compile {
        /// Path to the model.toml.
        model: PathBuf,
        /// Directory to write the compiled model to.
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Print the IR after this pass (dce, cse, simplify, conv1x1_as_mm,
        /// fuse_qkv, fp8, hoist_weights, fusion).
        #[arg(long, value_name = "PASS")]
        dump_after: Option<String>,
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
        } => compile::run(&model, out.as_deref(), dump_after.as_deref()),
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
