//! Where the repository is, for test and bench binaries that also run on
//! the GPU machine, which has a copy of the tree but not the path the
//! binary was built in.

use std::path::PathBuf;

/// The repository root: the current directory when it is one (the GPU
/// machine runs the binary from a copy of the tree), else the source tree.
pub fn root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    if cwd.join("models/tiny-schnell.toml").is_file() {
        cwd
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }
}
