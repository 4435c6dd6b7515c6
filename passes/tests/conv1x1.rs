//! conv_1x1_as_mm on a VAE-style channels-last graph.

mod common;

use common::{count, random_inputs, run};
use fluxc_ir::{verify, DType, GraphBuilder};
use fluxc_passes::conv1x1::conv1x1_as_mm;

#[test]
fn pointwise_convs_become_linears_and_compute_the_same() {
    // GroupNorm → SiLU → 3×3 conv → 1×1 conv (the VAE's resnet shortcut and
    // attention projections are 1×1), plus a strided 1×1 conv that must stay.
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [1, 6, 6, 8]).unwrap();
    let gw = b.weight("norm.weight", DType::F32, [8]).unwrap();
    let gb = b.weight("norm.bias", DType::F32, [8]).unwrap();
    let h = b.group_norm(x, gw, gb, 4, 1e-6).unwrap();
    let h = b.silu(h).unwrap();
    let w3 = b.weight("conv.weight", DType::F32, [8, 8, 3, 3]).unwrap();
    let h = b.conv2d(h, w3, None, 1, 1).unwrap();
    let w1 = b.weight("proj.weight", DType::F32, [12, 8, 1, 1]).unwrap();
    let b1 = b.weight("proj.bias", DType::F32, [12]).unwrap();
    let y = b.conv2d(h, w1, Some(b1), 1, 0).unwrap();
    let ws = b.weight("down.weight", DType::F32, [4, 8, 1, 1]).unwrap();
    let z = b.conv2d(x, ws, None, 2, 0).unwrap();
    b.output("y", y).unwrap();
    b.output("z", z).unwrap();
    let before = b.finish().unwrap();

    let mut after = before.clone();
    assert_eq!(conv1x1_as_mm(&mut after).unwrap(), 1);
    verify(&after).unwrap();
    assert_eq!(count(&after, "conv2d"), 2, "3x3 and strided 1x1 stay");
    assert_eq!(count(&after, "linear"), 1);
    let inputs = random_inputs(&before, 3);
    for out in ["y", "z"] {
        let error = run(&after, &inputs, out).rel_l2(&run(&before, &inputs, out));
        assert!(error < 1e-6, "{out}: {error}");
    }
}
