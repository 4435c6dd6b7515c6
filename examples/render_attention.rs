//! Writes the attention kernels exactly as codegen renders them (head dims 64
//! and 128) with their launch figures, for `benches/attention/check.py`, and
//! the fp8 kernel with its V layout kernel (head dim 128, `fp8_meta.txt`) for
//! `benches/attention/check_fp8.py`.
//!
//! ```sh
//! cargo run --release --example render_attention -- .dev/attention
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use fluxc::artifact::AttentionOperands;
use fluxc::codegen::attention::render_attention;
use fluxc::codegen::attention_fp8::{render_attention_fp8, render_v_layout};

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: render_attention <output-dir>");
        return ExitCode::from(2);
    };
    let mut meta = Vec::new();
    for d in [64usize, 128] {
        let kernel = match render_attention(d) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let prelude = "#include <cuda_bf16.h>\n";
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(
                dir.join(format!("{}.cu", kernel.name)),
                format!("{prelude}{}", kernel.source),
            )
        });
        if let Err(e) = written {
            eprintln!("error: cannot write to {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        meta.push(kernel);
    }
    // The fifth field tells check.py to pass q, k and v as tensor maps,
    // with boxes of `kv_rows` keys for k and v.
    let abi = match meta[1].operands {
        AttentionOperands::TensorMaps { kv_rows, .. } => format!(" tma:{kv_rows}"),
        AttentionOperands::Pointers => String::new(),
        AttentionOperands::Fp8TensorMaps { .. } => {
            eprintln!("error: the bf16 kernel was rendered with fp8 operands");
            return ExitCode::FAILURE;
        }
    };
    let line = format!(
        "{} {} {} {}{abi}\n",
        meta[1].threads, meta[1].block_m, meta[0].shared_bytes, meta[1].shared_bytes
    );
    if let Err(e) = std::fs::write(dir.join("meta.txt"), line) {
        eprintln!("error: cannot write meta.txt: {e}");
        return ExitCode::FAILURE;
    }
    let fp8 = render_attention_fp8(128).and_then(|k| Ok((k, render_v_layout(128)?)));
    let (fp8, v_layout) = match fp8 {
        Ok(kernels) => kernels,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // "threads block_m block_n shared_bytes attention-symbol v-layout-symbol v-layout-threads
    // v-layout-keys-per-cta"
    let written = std::fs::write(
        dir.join(format!("{}.cu", fp8.name)),
        format!("#include <cuda_bf16.h>\n{}", fp8.source),
    )
    .and_then(|()| std::fs::write(dir.join(format!("{}.cu", v_layout.name)), &v_layout.source))
    .and_then(|()| {
        std::fs::write(
            dir.join("fp8_meta.txt"),
            format!(
                "{} {} {} {} {} {} {} {}\n",
                fp8.threads,
                fp8.block_m,
                fp8.block_n,
                fp8.shared_bytes,
                fp8.name,
                v_layout.name,
                v_layout.threads,
                v_layout.keys_per_cta
            ),
        )
    });
    if let Err(e) = written {
        eprintln!(
            "error: cannot write the fp8 kernels to {}: {e}",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    println!("wrote attention kernels to {}", dir.display());
    ExitCode::SUCCESS
}
