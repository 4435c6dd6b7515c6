//! fluxc-checkpoint on real files: every directory layout opens, prefixes
//! are stripped as the caller says, derivations read the right rows from
//! stored F32/BF16/F16 data, raw row ranges come back uncopied, and errors
//! name the tensors and files involved.

use std::collections::BTreeMap;
use std::path::Path;

use fluxc_artifact::WeightSource;
use fluxc_checkpoint::{
    read_safetensors, read_safetensors_any, Checkpoint, CheckpointError, Dtype, HostTensor,
};
use safetensors::tensor::TensorView;
use tempfile::TempDir;

/// `(name, dtype, shape, bytes)` of a stored tensor.
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        other => panic!("no encoder for {other}"),
    }
}

fn raw(name: &str, dtype: Dtype, shape: &[usize], values: &[f32]) -> Raw {
    (
        name.to_string(),
        dtype,
        shape.to_vec(),
        encode(values, dtype),
    )
}

fn write(path: &Path, tensors: &[Raw]) {
    let views: BTreeMap<String, TensorView> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(&views, None, path).unwrap();
}

/// 0, 1, 2, ... as f32.
fn iota(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

#[test]
fn prefixes_are_stripped_as_told_and_plain_names_win() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("bundle.safetensors");
    write(
        &path,
        &[
            raw("model.diffusion_model.a", Dtype::F32, &[2], &[1.0, 2.0]),
            raw("model.diffusion_model.b", Dtype::F32, &[1], &[9.0]),
            raw("b", Dtype::F32, &[1], &[3.0]),
            raw("vae.c", Dtype::F32, &[1], &[4.0]),
        ],
    );
    let mut ckpt = Checkpoint::open(&path).unwrap();
    assert!(!ckpt.is_sharded());
    assert!(!ckpt.contains("a"));
    assert_eq!(ckpt.stored_names().len(), 4);

    ckpt.strip_prefixes(&["model.diffusion_model.", "vae."]);
    assert_eq!(ckpt.tensor_names(), vec!["a", "b", "c"]);
    let b = ckpt.derive("b", &WeightSource::tensor("b")).unwrap();
    assert_eq!(b.data, vec![3.0], "the unprefixed copy wins");

    ckpt.strip_prefixes::<&str>(&[]);
    assert!(ckpt.contains("model.diffusion_model.a"));
    assert!(!ckpt.contains("a"));
}

#[test]
fn every_layout_opens() {
    let tmp = TempDir::new().unwrap();
    let tensors = [
        raw("x", Dtype::F32, &[2, 2], &iota(4)),
        raw("y", Dtype::BF16, &[3], &[0.5, 1.5, -2.0]),
    ];
    // Sharded, inside a pipeline root.
    let dir = tmp.path().join("pipe/transformer");
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir.join("part-1.safetensors"), &tensors[..1]);
    write(&dir.join("part-2.safetensors"), &tensors[1..]);
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"x": "part-1.safetensors", "y": "part-2.safetensors"}}"#,
    )
    .unwrap();
    // Unsharded directory.
    let single = tmp.path().join("single");
    std::fs::create_dir_all(&single).unwrap();
    write(
        &single.join("diffusion_pytorch_model.safetensors"),
        &tensors,
    );

    for path in [tmp.path().join("pipe"), dir.clone(), single.clone()] {
        let ckpt = Checkpoint::open(&path).unwrap();
        assert_eq!(ckpt.tensor_names(), vec!["x", "y"], "{}", path.display());
        let y = ckpt.derive("y", &WeightSource::tensor("y")).unwrap();
        assert_eq!(y.data, vec![0.5, 1.5, -2.0]);
    }
    assert!(Checkpoint::open(&dir).unwrap().is_sharded());
    let file = Checkpoint::open_file(&single.join("diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(
        file.tensor_info("x").unwrap(),
        (Dtype::F32, &[2usize, 2][..])
    );
}

#[test]
fn derivations_read_the_right_rows() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("m.safetensors");
    write(
        &path,
        &[
            raw("qkv", Dtype::F16, &[6, 2], &iota(12)),
            raw("mod", Dtype::BF16, &[4], &[1.0, 2.0, 3.0, 4.0]),
        ],
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    let k = WeightSource::tensor("qkv").rows(2, 2);
    assert_eq!(
        ckpt.load("k", &k, &[2, 2]).unwrap(),
        HostTensor::new(vec![2, 2], vec![4.0, 5.0, 6.0, 7.0]).unwrap()
    );
    let swapped = WeightSource::tensor("mod").swap_halves();
    assert_eq!(
        ckpt.derive("m", &swapped).unwrap().data,
        vec![3.0, 4.0, 1.0, 2.0]
    );
    let stacked = WeightSource::Concat {
        parts: vec![k.clone(), WeightSource::tensor("qkv").rows(0, 1)],
    };
    assert_eq!(ckpt.derived_shape("s", &stacked).unwrap(), vec![3, 2]);
    assert_eq!(
        ckpt.derive("s", &stacked).unwrap().data,
        vec![4.0, 5.0, 6.0, 7.0, 0.0, 1.0]
    );
}

#[test]
fn row_ranges_come_back_as_stored_bytes() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("m.safetensors");
    let values = iota(12);
    write(&path, &[raw("w", Dtype::BF16, &[6, 2], &values)]);
    let ckpt = Checkpoint::open(&path).unwrap();
    let all = ckpt
        .stored_bytes("w", &WeightSource::tensor("w"))
        .unwrap()
        .unwrap();
    assert_eq!(all.dtype, Dtype::BF16);
    assert_eq!(all.bytes, encode(&values, Dtype::BF16).as_slice());
    let nested = WeightSource::tensor("w").rows(1, 4).rows(1, 2);
    let part = ckpt.stored_bytes("w", &nested).unwrap().unwrap();
    assert_eq!(part.bytes, encode(&values[4..8], Dtype::BF16).as_slice());
    let swapped = WeightSource::tensor("w").swap_halves();
    assert!(ckpt.stored_bytes("w", &swapped).unwrap().is_none());
    assert!(ckpt
        .stored_bytes("w", &WeightSource::tensor("w").rows(5, 2))
        .is_err());
}

#[test]
fn errors_name_tensors_and_files() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("m.safetensors");
    write(&path, &[raw("a", Dtype::F32, &[2, 3], &iota(6))]);
    let ckpt = Checkpoint::open(&path).unwrap();

    let both = WeightSource::Concat {
        parts: vec![WeightSource::tensor("p"), WeightSource::tensor("q")],
    };
    let err = ckpt.check("w", &both, &[1]).unwrap_err();
    assert!(
        matches!(err, CheckpointError::MissingTensor { .. }),
        "{err}"
    );
    let msg = err.to_string();
    for needle in ["`w`", "`p`", "`q`", "m.safetensors"] {
        assert!(msg.contains(needle), "{msg} lacks {needle}");
    }
    assert_eq!(ckpt.missing_tensors(&both), vec!["p", "q"]);

    let err = ckpt
        .check("w", &WeightSource::tensor("a"), &[3, 2])
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("[3,2]") && msg.contains("[2,3]"), "{msg}");

    let err = Checkpoint::open(&tmp.path().join("nothing")).unwrap_err();
    assert!(matches!(err, CheckpointError::NotFound { .. }), "{err}");
}

#[test]
fn whole_files_read_with_and_without_conversion() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("io.safetensors");
    let ids: Vec<u8> = [3i64, -4].iter().flat_map(|v| v.to_le_bytes()).collect();
    write(
        &path,
        &[
            raw("x", Dtype::BF16, &[2], &[1.0, -0.5]),
            ("ids".to_string(), Dtype::I64, vec![2], ids),
        ],
    );
    let any = read_safetensors_any(&path).unwrap();
    assert_eq!(
        any["ids"],
        HostTensor::new(vec![2], vec![3.0, -4.0]).unwrap()
    );
    assert_eq!(any["x"].data, vec![1.0, -0.5]);
    let err = read_safetensors(&path).unwrap_err();
    assert!(
        matches!(err, CheckpointError::UnsupportedDtype { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("ids"), "{err}");
}
