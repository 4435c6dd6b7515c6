//! Writing an artifact directory.
//!
//! Everything is written into a sibling staging directory which is then
//! renamed into place, so a failed compile never leaves a half-written
//! artifact; an existing directory is replaced only if it is an artifact
//! (holds `manifest.json` or `graph.txt`) or is empty.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use fluxc_artifact::files;

use crate::{schedule_json, CodegenError, Generated};

/// Why an artifact could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The output path holds something that is not an artifact.
    #[error("output `{}` exists and is not a fluxc artifact; choose another path or remove it", .0.display())]
    NotAnArtifact(PathBuf),
    /// A file operation failed.
    #[error("cannot write artifact `{}`: {source}", path.display())]
    Io {
        /// The artifact path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// Serialization failed.
    #[error(transparent)]
    Codegen(#[from] CodegenError),
}

/// Refuses a path that exists and is neither an artifact nor empty.
pub fn check_output_dir(out: &Path) -> Result<(), WriteError> {
    if !out.exists() {
        return Ok(());
    }
    let is_artifact =
        out.is_dir() && (out.join(files::MANIFEST).is_file() || out.join(files::GRAPH).is_file());
    let is_empty_dir = out.is_dir()
        && fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if is_artifact || is_empty_dir {
        Ok(())
    } else {
        Err(WriteError::NotAnArtifact(out.to_path_buf()))
    }
}

/// Writes `generated` to `out` atomically.
pub fn write_artifact(out: &Path, generated: &Generated) -> Result<(), WriteError> {
    check_output_dir(out)?;
    let io_err = |source| WriteError::Io {
        path: out.to_path_buf(),
        source,
    };
    let manifest = serde_json::to_string_pretty(&generated.manifest)
        .map_err(|e| CodegenError::Invalid(format!("cannot serialize the manifest: {e}")))?
        + "\n";
    let schedule = schedule_json(&generated.schedule)?;
    let staging = sibling(out, "staging");
    let result = (|| -> io::Result<()> {
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir_all(&staging)?;
        fs::write(staging.join(files::SCHEDULE), &schedule)?;
        fs::write(staging.join(files::KERNELS), &generated.kernels_cu)?;
        fs::write(staging.join(files::GRAPH), &generated.graph_txt)?;
        fs::write(staging.join(files::FUSION), &generated.fusion_txt)?;
        // The manifest last: its presence marks a complete artifact.
        fs::write(staging.join(files::MANIFEST), &manifest)?;
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
    result.map_err(io_err)
}

/// `parent/.name.tag-PID` next to `path`.
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
