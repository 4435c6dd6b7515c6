//! Everything `Engine::load` does before it needs a GPU, on a real compiled
//! artifact: validation, layout selection, every weight derived and
//! converted into a host copy of the weight region, every step checked, and
//! (where libnvrtc loads) `kernels.cu` compiled to a CUBIN.
//!
//! Set `FLUXC_TEST_ARTIFACT` (a directory written by `fluxc compile -o`) and
//! `FLUXC_TEST_CHECKPOINT`; without them the test says so and passes. E.g.
//!
//! ```sh
//! fluxc compile models/tiny-schnell.toml -o /tmp/tiny
//! FLUXC_TEST_ARTIFACT=/tmp/tiny FLUXC_TEST_CHECKPOINT=tests/fixtures/tiny-schnell/bfl.safetensors \
//!   cargo test -p fluxc-runtime --test host_path -- --nocapture
//! ```

use std::path::PathBuf;

use fluxc_artifact::Region;
use fluxc_checkpoint::Checkpoint;
use fluxc_runtime::compile::{compile_cubin, nvrtc_options};
use fluxc_runtime::convert::decode;
use fluxc_runtime::weights::{select_layout, WeightPlan};
use fluxc_runtime::{Artifact, LoadOptions};

#[test]
fn host_side_of_loading_a_real_artifact() {
    let (Some(artifact), Some(checkpoint)) = (
        std::env::var_os("FLUXC_TEST_ARTIFACT").map(PathBuf::from),
        std::env::var_os("FLUXC_TEST_CHECKPOINT").map(PathBuf::from),
    ) else {
        println!("SKIP host_side_of_loading_a_real_artifact: FLUXC_TEST_ARTIFACT / FLUXC_TEST_CHECKPOINT not set");
        return;
    };
    let artifact = Artifact::load(&artifact).unwrap();
    let mut ckpt = Checkpoint::open(&checkpoint).unwrap();
    let layout = select_layout(&artifact.manifest, &mut ckpt).unwrap();
    let layout = &artifact.manifest.layouts[layout].name;
    let plan = WeightPlan::new(&artifact.manifest, &artifact.schedule, layout, &ckpt).unwrap();
    let mut region = vec![0u8; artifact.schedule.weight_bytes as usize];
    plan.load(
        &ckpt,
        |offset, bytes| {
            region[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
            Ok(())
        },
        |p| {
            if p.done == p.total {
                println!("{p}");
            }
        },
    )
    .unwrap();
    // Every weight buffer was written, and holds finite values.
    for w in &artifact.manifest.weights {
        let b = artifact.buffer(w.buffer).unwrap();
        assert_eq!(b.region, Region::Weights);
        let bytes = &region[b.offset as usize..(b.offset + b.bytes) as usize];
        let values = decode(b.dtype, bytes);
        assert!(values.iter().all(|v| v.is_finite()), "{}", w.name);
        assert!(values.iter().any(|&v| v != 0.0), "{} is all zeros", w.name);
    }
    println!(
        "{} weights in layout `{layout}`, {} steps",
        plan.len(),
        artifact.schedule.steps.len()
    );

    // SAFETY: only tries to dlopen libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!("SKIP the NVRTC compile: libnvrtc cannot be loaded");
        return;
    }
    let options = nvrtc_options(
        &artifact.manifest.arch,
        &LoadOptions::default().cuda_include_dirs,
    );
    let t = std::time::Instant::now();
    let (cubin, log) = compile_cubin(&artifact.kernels, &artifact.manifest.arch, &options).unwrap();
    println!(
        "kernels.cu: {} byte CUBIN in {:.2} s{}",
        cubin.len(),
        t.elapsed().as_secs_f64(),
        if log.is_empty() {
            String::new()
        } else {
            format!("\n{log}")
        }
    );
    assert_eq!(&cubin[..4], b"\x7fELF");
}
