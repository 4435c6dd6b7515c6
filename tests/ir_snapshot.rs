//! Snapshot of the IR the FLUX builders produce for the tiny presets (the
//! transformer's and the VAE decoder's).
//!
//! The dump is the builder's contract with every later pass: a change to it
//! must be reviewed line by line (`cargo insta review`), never accepted blindly.

use std::path::Path;

use fluxc::ir::print_graph;
use fluxc::models::{build_graph, ModelConfig};

fn dump(preset: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{preset}.toml"));
    let cfg = ModelConfig::load(&path).expect("preset loads");
    let graph = build_graph(&cfg).expect("graph builds");
    print_graph(&graph).expect("graph prints")
}

#[test]
fn tiny_schnell_ir() {
    insta::assert_snapshot!(dump("tiny-schnell"));
}

#[test]
fn tiny_dev_ir() {
    insta::assert_snapshot!(dump("tiny-dev"));
}

#[test]
fn tiny_vae_ir() {
    insta::assert_snapshot!(dump("tiny-vae"));
}
