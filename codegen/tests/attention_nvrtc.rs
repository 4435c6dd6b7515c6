//! The rendered flash-attention kernels compile for sm_90a with NVRTC.
//!
//! Needs `libnvrtc` on the loader path and the CUDA headers (directory from
//! `FLUXC_CUDA_INCLUDE`, default `/usr/local/cuda/include`); without NVRTC the
//! compile test prints why and passes (CI machines have no CUDA). Setting
//! `FLUXC_ATTENTION_DUMP_DIR` writes the rendered sources there, for running
//! them elsewhere.

mod common;

use common::compile_cubin;
use fluxc_codegen::attention::{grid, render_attention};

#[test]
fn rendered_source_is_complete() {
    for d in [64usize, 128] {
        let k = render_attention(d).unwrap();
        assert_eq!(k.name, format!("attention_d{d}_bf16"));
        assert!(k.source.contains(&format!("{}(", k.name)));
        assert!(k.source.contains("extern \"C\" __global__"));
        assert!(!k.source.contains("{{"), "leftover placeholder for d={d}");
        assert!(!k.source.contains("}}"), "leftover placeholder for d={d}");
        assert!(k.shared_bytes > 48 * 1024 && k.shared_bytes <= 227 * 1024);
        // One producer warpgroup and one consumer warpgroup per 64 rows.
        assert_eq!(k.threads, 128 + k.block_m / 64 * 128);
        assert_eq!(grid(&k, 1, 24, 4352)[0], 4352u32.div_ceil(k.block_m));
    }
    for d in [0usize, 16, 32, 80, 96, 100, 256] {
        assert!(
            render_attention(d).is_err(),
            "head_dim {d} must be rejected"
        );
    }
}

#[test]
fn nvrtc_compiles_sm90a() {
    if common::nvrtc_unavailable().is_some() {
        println!("SKIP nvrtc_compiles_sm90a: libnvrtc could not be loaded (no CUDA here)");
        return;
    }
    let include_dir =
        std::env::var("FLUXC_CUDA_INCLUDE").unwrap_or_else(|_| "/usr/local/cuda/include".into());
    if !std::path::Path::new(&include_dir)
        .join("cuda_bf16.h")
        .exists()
    {
        println!("SKIP nvrtc_compiles_sm90a: no cuda_bf16.h under {include_dir}");
        return;
    }
    let dump_dir = std::env::var_os("FLUXC_ATTENTION_DUMP_DIR").map(std::path::PathBuf::from);

    let kernels: Vec<_> = [64usize, 128].map(|d| render_attention(d).unwrap()).into();
    for k in &kernels {
        if let Some(dir) = &dump_dir {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{}.cu", k.name)), &k.source).unwrap();
        }
        let (cubin, log) = compile_cubin(&k.source, &k.name, &include_dir).unwrap();
        println!(
            "{}: {} bytes of CUBIN; ptxas says:\n{}",
            k.name,
            cubin.len(),
            log.trim()
        );
        assert!(!cubin.is_empty(), "{}: no CUBIN produced", k.name);
        assert!(
            !log.contains("bytes spill stores") || log.contains(" 0 bytes spill stores"),
            "{}: register spills\n{log}",
            k.name
        );
        // ptxas serializes the asynchronous wgmma pipeline (a large slowdown,
        // still correct) when it cannot prove the registers of in-flight
        // wgmmas untouched; it says so with C7513 / C7515 / C7520.
        assert!(
            !log.contains("wgmma.mma_async instructions are serialized"),
            "{}: wgmma pipeline serialized by ptxas\n{log}",
            k.name
        );
    }

    // Both instances in one translation unit (as in a generated kernels.cu):
    // the shared helpers must not be redefined.
    let both = format!("{}\n{}", kernels[0].source, kernels[1].source);
    let (cubin, _) = compile_cubin(&both, "attention_both", &include_dir).unwrap();
    assert!(!cubin.is_empty());
}

/// The rendered attention kernels, as they go into `kernels.cu`: a change
/// here changes what runs on the GPU, so review it line by line.
#[test]
fn rendered_attention_snapshots() {
    for d in [64usize, 128] {
        let k = render_attention(d).unwrap();
        let header = format!(
            "// {}: block_m {}, {} threads, {} bytes of dynamic shared memory\n",
            k.name, k.block_m, k.threads, k.shared_bytes
        );
        insta::assert_snapshot!(format!("attention_d{d}_bf16"), header + &k.source);
    }
    let simt = fluxc_codegen::attention::render_simt_attention(40, "float", "f32").unwrap();
    let header = format!(
        "// {}: block_m {}, {} threads, {} bytes of dynamic shared memory\n",
        simt.name, simt.block_m, simt.threads, simt.shared_bytes
    );
    insta::assert_snapshot!("attention_simt_d40_f32", header + &simt.source);
}
