//! `fluxc compile model.toml`: build the graph, run the pass pipeline, and
//! write what it produced.
//!
//! `--dump-after <pass>` prints the IR right after that pass (any name of
//! `fluxc_passes::pipeline::STEPS`). `-o DIR` writes the compiled model:
//! so far the optimized graph (`graph.txt`), the load-time derivation of
//! every weight (`weights.json`) and the kernel grouping (`fusion.txt`);
//! kernels and the schedule come with codegen. The directory is written
//! next to its final place and renamed into it, so a failed compile never
//! leaves a half-written artifact.

use std::fs;
use std::path::{Path, PathBuf};

use fluxc_models::{flux, ModelConfig};
use fluxc_passes::pipeline::{optimize, optimize_with_dump, Optimized, Step};

/// Marker file of an artifact directory; only directories holding it are
/// ever replaced.
const MARKER: &str = "graph.txt";

/// Runs the compile.
pub fn run(
    model: &Path,
    out: Option<&Path>,
    dump_after: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(name) = dump_after {
        Step::from_name(name)?; // fail before the long work
    }
    if let Some(out) = out {
        check_output_dir(out)?;
    }
    let cfg = ModelConfig::load(model)?;
    let graph = flux::build_transformer(&cfg)
        .map_err(|e| format!("building the graph of `{}` failed: {e}", model.display()))?;
    let options = cfg.passes.options();
    let (optimized, dump) = match dump_after {
        Some(name) => {
            let (optimized, dump) = optimize_with_dump(graph, &options, name)?;
            (optimized, Some(dump))
        }
        None => (optimize(graph, &options)?, None),
    };
    for line in &optimized.log {
        eprintln!("  {line}");
    }
    if let Some(dump) = dump {
        print!("{dump}");
    }
    if let Some(out) = out {
        write_artifact(out, &optimized)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// Refuses to overwrite a directory that is not a fluxc artifact.
fn check_output_dir(out: &Path) -> Result<(), String> {
    if !out.exists() {
        return Ok(());
    }
    let is_artifact = out.is_dir() && out.join(MARKER).is_file();
    let is_empty_dir = out.is_dir()
        && fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if is_artifact || is_empty_dir {
        Ok(())
    } else {
        Err(format!(
            "output `{}` exists and is not a fluxc artifact; choose another path or remove it",
            out.display()
        ))
    }
}

/// Writes the artifact into a sibling temporary directory, then swaps it in.
fn write_artifact(out: &Path, optimized: &Optimized) -> Result<(), Box<dyn std::error::Error>> {
    let staging = sibling(out, "staging");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        fs::create_dir_all(&staging)?;
        fs::write(
            staging.join(MARKER),
            fluxc_ir::print_graph(&optimized.graph)?,
        )?;
        fs::write(
            staging.join("weights.json"),
            serde_json::to_string_pretty(&optimized.weights)? + "\n",
        )?;
        fs::write(
            staging.join("fusion.txt"),
            optimized.fusion.dump(&optimized.graph)?,
        )?;
        if out.exists() {
            let old = sibling(out, "old");
            fs::rename(out, &old)?;
            fs::rename(&staging, out)?;
            fs::remove_dir_all(&old)?;
        } else {
            fs::rename(&staging, out)?;
        }
        Ok(())
    })();
    if result.is_err() && staging.exists() {
        let _ = fs::remove_dir_all(&staging);
    }
    result.map_err(|e| format!("cannot write artifact `{}`: {e}", out.display()).into())
}

/// `dir/.name.tag-PID` next to `path`.
fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artifact".into());
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join(format!(".{name}.{tag}-{}", std::process::id()))
}
