//! `fluxc generate <pipeline-dir> --embeds prompt.safetensors --seed 42 -o
//! out.png`: run a compiled pipeline (`fluxc compile pipeline.toml -o DIR`)
//! on the GPU and write the image as PNG.
//!
//! The embeddings file holds `prompt_embeds` `[B, T, D]` and
//! `pooled_prompt_embeds` `[B, P]` as diffusers' `encode_prompt` returns
//! them (f32, bf16 or f16). Weights come from `--weights`, a diffusers
//! pipeline directory (its `transformer/` and `vae/`), or from
//! `--transformer-weights` and `--vae-weights` (e.g. BFL's
//! `flux1-schnell.safetensors` and `ae.safetensors`). `--latents-in` starts
//! from given latents (one tensor, packed `[B, (H/2)(W/2), 4C]` as
//! diffusers' `latents=` argument takes them, or unpacked `[B, C, H, W]`)
//! instead of seeded noise; `--latents-out` writes the final latents
//! (packed, f32). `--replays N` times N more runs of the whole pipeline.
//!
//! Every file, name, shape and dtype, and whether the outputs can be
//! written, is checked before the GPU is touched, each error naming what is
//! wrong. Outputs are written to a temporary file next to them and renamed,
//! so a failure leaves nothing half-written.

use std::collections::BTreeMap;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use fluxc_artifact::PipelineSpec;
use fluxc_runtime::pipeline::check_dir;
use fluxc_runtime::{Image, LoadOptions, Pipeline, Start};

/// What `fluxc generate` was asked to do.
pub struct GenerateArgs<'a> {
    /// The pipeline directory.
    pub pipeline: &'a Path,
    /// A diffusers pipeline directory with `transformer/` and `vae/`.
    pub weights: Option<&'a Path>,
    /// The transformer's checkpoint.
    pub transformer_weights: Option<&'a Path>,
    /// The VAE's checkpoint.
    pub vae_weights: Option<&'a Path>,
    /// The prompt embeddings.
    pub embeds: &'a Path,
    /// The noise seed.
    pub seed: u64,
    /// The PNG to write.
    pub out: &'a Path,
    /// Latents to start from.
    pub latents_in: Option<&'a Path>,
    /// Where to write the final latents.
    pub latents_out: Option<&'a Path>,
    /// Timed runs after the first.
    pub replays: usize,
    /// Launch the loop directly instead of as a CUDA graph.
    pub eager: bool,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Tensors by name: shape and f32 values.
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Runs the pipeline.
pub fn run(args: &GenerateArgs) -> Result<()> {
    // Host checks, in the order the files are named.
    let spec = check_dir(args.pipeline)?;
    let (transformer_weights, vae_weights) = weights(args)?;
    let mut embeds = read_tensors(args.embeds, "--embeds")?;
    let s = &spec;
    let b = s.latent.batch as usize;
    let prompt = take(
        &mut embeds,
        args.embeds,
        "prompt_embeds",
        &[b, s.text_tokens as usize, s.joint_attention_dim as usize],
    )?;
    let pooled = take(
        &mut embeds,
        args.embeds,
        "pooled_prompt_embeds",
        &[b, s.pooled_projection_dim as usize],
    )?;
    let given = args.latents_in.map(|p| read_latents(p, s)).transpose()?;
    check_png_path(args.out)?;
    check_writable(args.out, "-o")?;
    if let Some(p) = args.latents_out {
        check_writable(p, "--latents-out")?;
    }

    let options = LoadOptions {
        capture_graph: !args.eager,
        ..LoadOptions::default()
    };
    let mut pipeline = Pipeline::load(args.pipeline, &transformer_weights, &vae_weights, &options)?;
    let start = match &given {
        Some(latents) => Start::Latents(latents),
        None => Start::Seed(args.seed),
    };
    let t = std::time::Instant::now();
    let image = pipeline.generate(&prompt, &pooled, start)?;
    eprintln!(
        "generated {}x{} in {:.1} ms (first run, host time incl. copies)",
        image.width,
        image.height,
        t.elapsed().as_secs_f64() * 1e3
    );
    write_pngs(args.out, &image)?;
    if let Some(p) = args.latents_out {
        let latents = pipeline.final_latents()?;
        let shape: Vec<usize> = s.latent.packed().iter().map(|&d| d as usize).collect();
        write_atomically(p, |tmp| write_latents(tmp, &shape, &latents))?;
        println!("wrote the final latents {shape:?} to {}", p.display());
    }
    if args.replays > 0 {
        let timing = pipeline.time_replays(1, args.replays)?;
        let gpu = timing.gpu().ok_or("no timing")?;
        println!(
            "{} runs of the whole pipeline ({} steps + VAE decode{}): median {:.2} ms, min {:.2}, max {:.2} (GPU); launch {:.1} us",
            args.replays,
            spec.steps,
            if pipeline.has_graph() { ", one CUDA graph" } else { ", no graph" },
            gpu.median,
            gpu.min,
            gpu.max,
            timing.median_launch_us()
        );
    }
    Ok(())
}

/// The transformer's and the VAE's checkpoints from the flags.
fn weights(args: &GenerateArgs) -> Result<(PathBuf, PathBuf)> {
    let (t, v) =
        match (args.weights, args.transformer_weights, args.vae_weights) {
            (Some(dir), None, None) => (dir.join("transformer"), dir.join("vae")),
            (None, Some(t), Some(v)) => (t.to_path_buf(), v.to_path_buf()),
            (Some(_), _, _) => {
                return Err("give either --weights (a diffusers pipeline directory) or \
                 --transformer-weights and --vae-weights, not both"
                    .into())
            }
            _ => return Err(
                "no weights: give --weights (a diffusers pipeline directory with transformer/ and \
                 vae/) or both --transformer-weights and --vae-weights"
                    .into(),
            ),
        };
    for (path, what) in [(&t, "transformer"), (&v, "VAE")] {
        if !path.exists() {
            return Err(format!("the {what} weights `{}` do not exist", path.display()).into());
        }
    }
    Ok((t, v))
}

/// Every tensor of the safetensors file at `path` (named by `flag` in
/// errors), checked to be f32, bf16 or f16, as f32.
fn read_tensors(path: &Path, flag: &str) -> Result<Tensors> {
    let bytes =
        fs::read(path).map_err(|e| format!("cannot read {flag} file `{}`: {e}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        format!(
            "{flag} file `{}` is not a safetensors file: {e}",
            path.display()
        )
    })?;
    for (name, view) in file.tensors() {
        use safetensors::Dtype;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return Err(format!(
                "tensor `{name}` in `{}` is {:?}; f32, bf16 or f16 are accepted",
                path.display(),
                view.dtype()
            )
            .into());
        }
    }
    drop(file);
    drop(bytes);
    Ok(fluxc_checkpoint::read_safetensors_any(path)?
        .into_iter()
        .map(|(name, t)| (name, (t.shape, t.data)))
        .collect())
}

/// Tensor `name` of `tensors` (read from `path`), checked to have `shape`.
fn take(tensors: &mut Tensors, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let held = tensors
        .keys()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let (found, data) = tensors.remove(name).ok_or_else(|| {
        format!(
            "`{}` has no tensor `{name}` (shape {shape:?}); it holds: {}",
            path.display(),
            if held.is_empty() { "nothing" } else { &held }
        )
    })?;
    if found != shape {
        return Err(format!(
            "`{name}` in `{}` has shape {found:?}; this pipeline needs {shape:?}",
            path.display()
        )
        .into());
    }
    Ok(data)
}

/// The latents of `--latents-in`: its one tensor (or the one named
/// `latents`), packed `[B, tokens, 4C]` or unpacked `[B, C, H, W]`
/// (packed here), as the packed values.
fn read_latents(path: &Path, spec: &PipelineSpec) -> Result<Vec<f32>> {
    let mut tensors = read_tensors(path, "--latents-in")?;
    let name = if tensors.len() == 1 {
        tensors.keys().next().cloned().unwrap_or_default()
    } else {
        "latents".to_string()
    };
    let l = &spec.latent;
    let packed: Vec<usize> = l.packed().iter().map(|&d| d as usize).collect();
    let unpacked = [l.batch, l.channels, l.height, l.width].map(|d| d as usize);
    let (shape, data) = tensors.remove(&name).ok_or_else(|| {
        format!(
            "`{}` holds {} tensors and none is named `latents`",
            path.display(),
            tensors.len()
        )
    })?;
    if shape == packed {
        Ok(data)
    } else if shape == unpacked {
        Ok(fluxc_models::scheduler::pack_latents(
            &data,
            unpacked[0],
            unpacked[1],
            unpacked[2],
            unpacked[3],
        )?)
    } else {
        Err(format!(
            "latents `{name}` in `{}` have shape {shape:?}; this pipeline takes {packed:?} (packed) \
             or {unpacked:?} (unpacked)",
            path.display()
        )
        .into())
    }
}

/// Fails unless `path` ends in `.png`.
fn check_png_path(path: &Path) -> Result<()> {
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if png {
        Ok(())
    } else {
        Err(format!(
            "-o `{}`: the image is written as PNG; name it *.png",
            path.display()
        )
        .into())
    }
}

/// Fails unless a file can be created next to `path` (and `path` is not a
/// directory): creates and removes a probe file.
fn check_writable(path: &Path, flag: &str) -> Result<()> {
    if path.is_dir() {
        return Err(format!("{flag} `{}` is a directory", path.display()).into());
    }
    let probe = temp_path(path);
    fs::write(&probe, b"")
        .map_err(|e| format!("{flag} `{}` cannot be written: {e}", path.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// `<dir>/.<name>.fluxc-tmp`, next to `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.fluxc-tmp"))
}

/// Writes `path` through `write` into a temporary file renamed into place.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        fs::rename(&tmp, path).map_err(|e| format!("cannot write `{}`: {e}", path.display()).into())
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes each image of the batch: `out` for the first, `<stem>-<i>.png`
/// for the others.
fn write_pngs(out: &Path, image: &Image) -> Result<()> {
    for i in 0..image.batch {
        let path = if i == 0 {
            out.to_path_buf()
        } else {
            let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned());
            out.with_file_name(format!("{}-{i}.png", stem.unwrap_or_default()))
        };
        let pixels = image.to_u8(i).ok_or("image index out of range")?;
        write_atomically(&path, |tmp| write_png(tmp, image, &pixels))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One 8-bit RGB (or gray / RGBA by channel count) PNG.
fn write_png(path: &Path, image: &Image, pixels: &[u8]) -> Result<()> {
    let color = match image.channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        c => return Err(format!("cannot write an image of {c} channels as PNG").into()),
    };
    let file =
        fs::File::create(path).map_err(|e| format!("cannot create `{}`: {e}", path.display()))?;
    let mut encoder = png::Encoder::new(
        BufWriter::new(file),
        u32::try_from(image.width)?,
        u32::try_from(image.height)?,
    );
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(())
}

/// Writes `latents` as one f32 tensor `latents` of `shape`.
fn write_latents(path: &Path, shape: &[usize], latents: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = latents.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)?;
    let views = BTreeMap::from([("latents".to_string(), view)]);
    safetensors::serialize_to_file(&views, None, path)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_paths_and_writability_are_checked() {
        assert!(check_png_path(Path::new("a.png")).is_ok());
        assert!(check_png_path(Path::new("a.PNG")).is_ok());
        assert!(check_png_path(Path::new("a.jpg")).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(&dir.path().join("x.png"), "-o").is_ok());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let err = check_writable(&dir.path().join("no/such/x.png"), "-o").unwrap_err();
        assert!(err.to_string().contains("cannot be written"), "{err}");
        assert!(check_writable(dir.path(), "-o").is_err());
    }

    #[test]
    fn pngs_are_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let image = Image {
            batch: 1,
            height: 2,
            width: 3,
            channels: 3,
            dtype: fluxc_artifact::ElemType::F32,
            data: vec![0.0; 18],
        };
        let out = dir.path().join("o.png");
        write_pngs(&out, &image).unwrap();
        let bytes = fs::read(&out).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
