//! The rendered flash-attention kernels (bf16, and fp8 with its V layout
//! kernel) compile for sm_90a with NVRTC.
//!
//! Needs `libnvrtc` on the loader path and the CUDA headers (directory from
//! `FLUXC_CUDA_INCLUDE`, default `/usr/local/cuda/include`); without NVRTC the
//! compile test prints why and passes (CI machines have no CUDA). Setting
//! `FLUXC_ATTENTION_DUMP_DIR` writes the rendered sources there, for running
//! them elsewhere.

mod common;

use common::compile_cubin;
use fluxc_codegen::attention::{grid, render_attention};
use fluxc_codegen::attention_fp8::{render_attention_fp8, render_v_layout};

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

    let fp8 = render_attention_fp8(128).unwrap();
    let v_layout = render_v_layout(128).unwrap();
    let mut sources: Vec<(String, String)> = [64usize, 128]
        .map(|d| render_attention(d).unwrap())
        .into_iter()
        .map(|k| (k.name, k.source))
        .collect();
    sources.push((fp8.name, fp8.source));
    sources.push((v_layout.name, v_layout.source));
    for (name, source) in &sources {
        if let Some(dir) = &dump_dir {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{name}.cu")), source).unwrap();
        }
        let (cubin, log) = compile_cubin(source, name, &include_dir).unwrap();
        println!(
            "{name}: {} bytes of CUBIN; ptxas says:\n{}",
            cubin.len(),
            log.trim()
        );
        assert!(!cubin.is_empty(), "{name}: no CUBIN produced");
        assert!(
            !log.contains("bytes spill stores") || log.contains(" 0 bytes spill stores"),
            "{name}: register spills\n{log}"
        );
        // ptxas serializes the asynchronous wgmma pipeline (a large slowdown,
        // still correct) when it cannot prove the registers of in-flight
        // wgmmas untouched; it says so with C7513 / C7515 / C7520.
        assert!(
            !log.contains("wgmma.mma_async instructions are serialized"),
            "{name}: wgmma pipeline serialized by ptxas\n{log}"
        );
        // The runtime prints NVRTC's warnings at every compile.
        assert!(
            !log.contains("warning #"),
            "{name}: compiler warnings\n{log}"
        );
    }

    // All of them in one translation unit (as in a generated kernels.cu):
    // the shared helpers must not be redefined.
    let all: Vec<&str> = sources.iter().map(|(_, s)| s.as_str()).collect();
    let (cubin, log) = compile_cubin(&all.join("\n"), "attention_all", &include_dir).unwrap();
    assert!(!cubin.is_empty());
    assert!(!log.contains("warning #"), "compiler warnings\n{log}");
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
    let fp8 = render_attention_fp8(128).unwrap();
    let header = format!(
        "// {}: block_m {}, block_n {}, {} threads, {} bytes of dynamic shared memory\n",
        fp8.name, fp8.block_m, fp8.block_n, fp8.threads, fp8.shared_bytes
    );
    insta::assert_snapshot!("attention_fp8_d128", header + &fp8.source);
    let v_layout = render_v_layout(128).unwrap();
    let header = format!("// {}: {} threads\n", v_layout.name, v_layout.threads);
    insta::assert_snapshot!("attention_fp8_v_d128", header + &v_layout.source);
}
