//! `fluxc compile pipeline.toml -o DIR` for a pipeline file
//! (`architecture = "flux-pipeline"`): compiles the transformer and the VAE
//! decoder it names, with the pipeline's shapes, into `DIR/transformer/`
//! and `DIR/vae/` (with `hoist_conditioning`, the default, the transformer
//! in two parts: every step's conditioning in `DIR/conditioning/`, the
//! per-step forward that takes it as input in `DIR/transformer/`), and
//! writes the loop's numbers to `DIR/pipeline.json`
//! (`fluxc_artifact::PipelineSpec`).
//!
//! Everything is written into a staging directory next to `DIR` and moved
//! into place at the end, so a failed compile leaves `DIR` as it was. `DIR`
//! must be absent, empty, or an earlier pipeline directory.

use std::fs;
use std::path::{Path, PathBuf};

use fluxc_artifact::{CONDITIONING_DIR, PIPELINE_FILE, TRANSFORMER_DIR};
use fluxc_models::pipeline::PipelineConfig;
use fluxc_models::ModelConfig;

use crate::compile::{compile_model, CompileArgs};

/// Runs the compile of a pipeline file.
pub fn run(args: &CompileArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.dump_after.is_some() {
        return Err(format!(
            "--dump-after is for one model: compile the transformer or the VAE file `{}` names \
             on its own to see its IR",
            args.model.display()
        )
        .into());
    }
    if let Some(out) = args.out {
        check_pipeline_dir(out)?;
    }
    let cfg = PipelineConfig::load(args.model)?;
    let spec = cfg.spec()?;
    spec.validate()?;
    let json = serde_json::to_string_pretty(&spec)? + "\n";
    eprintln!("{}", spec.summary());
    let parts = parts(&cfg);
    let Some(out) = args.out else {
        for (dir, what, model, path) in &parts {
            eprintln!("{what} `{}` ({dir}):", path.display());
            compile_model(model, path, None, args)?;
        }
        return Ok(());
    };
    let staging = staging_dir(out);
    let written = (|| -> Result<(), Box<dyn std::error::Error>> {
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir_all(&staging)
            .map_err(|e| format!("cannot create `{}`: {e}", staging.display()))?;
        for (dir, what, model, path) in &parts {
            eprintln!("{what} `{}` ({dir}):", path.display());
            compile_model(model, path, Some(&staging.join(dir)), args)?;
        }
        fs::write(staging.join(PIPELINE_FILE), json)?;
        if out.exists() {
            fs::remove_dir_all(out)
                .map_err(|e| format!("cannot replace `{}`: {e}", out.display()))?;
        }
        fs::rename(&staging, out).map_err(|e| {
            format!(
                "cannot move `{}` to `{}`: {e}",
                staging.display(),
                out.display()
            )
        })?;
        Ok(())
    })();
    if written.is_err() && staging.exists() {
        let _ = fs::remove_dir_all(&staging);
    }
    written?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The artifacts of `cfg`: directory, what it is, its model and the file
/// it comes from.
fn parts(cfg: &PipelineConfig) -> Vec<(&'static str, &'static str, ModelConfig, &Path)> {
    cfg.artifacts()
        .into_iter()
        .map(|(dir, model)| {
            let (what, path) = match dir {
                CONDITIONING_DIR => (
                    "every step's conditioning of the transformer",
                    &cfg.transformer_path,
                ),
                TRANSFORMER_DIR if cfg.hoist_conditioning => {
                    ("the transformer's step", &cfg.transformer_path)
                }
                TRANSFORMER_DIR => ("the transformer", &cfg.transformer_path),
                _ => ("the VAE decoder", &cfg.vae_path),
            };
            (dir, what, model, path.as_path())
        })
        .collect()
}

/// Refuses an output path that exists and is neither an empty directory nor
/// a pipeline directory (one with `pipeline.json`).
fn check_pipeline_dir(out: &Path) -> Result<(), String> {
    if !out.exists() {
        return Ok(());
    }
    let empty = out.is_dir()
        && fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if empty || out.join(PIPELINE_FILE).is_file() {
        Ok(())
    } else {
        Err(format!(
            "output `{}` exists and is not a pipeline directory (no {PIPELINE_FILE}) nor empty; \
             refusing to overwrite it",
            out.display()
        ))
    }
}

/// `<parent>/.<name>.fluxc-staging`, next to `out`.
fn staging_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into());
    out.with_file_name(format!(".{name}.fluxc-staging"))
}
