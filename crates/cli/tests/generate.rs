//! `fluxc generate`: every check of its files, names, shapes, dtypes and
//! output paths fails with a clear message before any GPU work (so these
//! run anywhere), and leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fluxc() -> Command {
    Command::cargo_bin("fluxc").unwrap()
}

/// Writes f32 tensors to a safetensors file.
fn write(path: &Path, tensors: &[(&str, Vec<usize>, safetensors::Dtype)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, shape, dtype)| vec![0u8; shape.iter().product::<usize>() * dtype.bitsize() / 8])
        .collect();
    let views: BTreeMap<String, safetensors::tensor::TensorView> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, dtype), b)| {
            (
                name.to_string(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(&views, None, path).unwrap();
}

fn stderr_of(args: &[&std::ffi::OsStr]) -> String {
    let out = fluxc().arg("generate").args(args).assert().failure();
    String::from_utf8(out.get_output().stderr.clone()).unwrap()
}

#[test]
fn bad_inputs_are_named_before_any_gpu_work() {
    use safetensors::Dtype::{F32, I64};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipe = d.join("pipe");
    fluxc()
        .args(["compile", "-o"])
        .arg(&pipe)
        .arg(repo().join("models/tiny-schnell-pipeline.toml"))
        .assert()
        .success();
    let weights = repo().join("tests/fixtures/tiny-schnell/diffusers");
    let vae = repo().join("tests/fixtures/tiny-vae/diffusers");
    let good = d.join("good.safetensors");
    write(
        &good,
        &[
            ("prompt_embeds", vec![1, 7, 24], F32),
            ("pooled_prompt_embeds", vec![1, 12], F32),
        ],
    );
    let out = d.join("out.png");
    let base = |embeds: &Path, out: &Path| -> Vec<std::ffi::OsString> {
        vec![
            pipe.clone().into(),
            "--transformer-weights".into(),
            weights.clone().into(),
            "--vae-weights".into(),
            vae.clone().into(),
            "--embeds".into(),
            embeds.into(),
            "-o".into(),
            out.into(),
        ]
    };
    let run = |args: Vec<std::ffi::OsString>| {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        stderr_of(&refs)
    };

    let wrong_shape = d.join("shape.safetensors");
    write(
        &wrong_shape,
        &[
            ("prompt_embeds", vec![1, 8, 24], F32),
            ("pooled_prompt_embeds", vec![1, 12], F32),
        ],
    );
    let err = run(base(&wrong_shape, &out));
    assert!(
        err.contains("`prompt_embeds`") && err.contains("[1, 8, 24]") && err.contains("[1, 7, 24]"),
        "{err}"
    );

    let missing = d.join("missing.safetensors");
    write(&missing, &[("prompt_embeds", vec![1, 7, 24], F32)]);
    let err = run(base(&missing, &out));
    assert!(err.contains("no tensor `pooled_prompt_embeds`"), "{err}");

    let ints = d.join("ints.safetensors");
    write(&ints, &[("prompt_embeds", vec![1, 7, 24], I64)]);
    let err = run(base(&ints, &out));
    assert!(err.contains("is I64"), "{err}");

    let err = run(base(&d.join("nope.safetensors"), &out));
    assert!(err.contains("cannot read --embeds file"), "{err}");

    let err = run(base(&good, &d.join("no/such/dir/out.png")));
    assert!(err.contains("cannot be written"), "{err}");

    let err = run(base(&good, &d.join("out.jpg")));
    assert!(err.contains("name it *.png"), "{err}");

    let mut args = base(&good, &out);
    args.extend(["--latents-in".into(), wrong_shape.clone().into()]);
    let err = run(args);
    assert!(err.contains("none is named `latents`"), "{err}");

    let err = stderr_of(&[
        pipe.as_os_str(),
        "--embeds".as_ref(),
        good.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(err.contains("no weights"), "{err}");

    let err = stderr_of(&[
        d.as_os_str(),
        "--weights".as_ref(),
        d.as_os_str(),
        "--embeds".as_ref(),
        good.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(err.contains("pipeline.json"), "{err}");

    // Nothing was written next to the outputs.
    let mut left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "good.safetensors",
            "ints.safetensors",
            "missing.safetensors",
            "pipe",
            "shape.safetensors"
        ]
    );
}
