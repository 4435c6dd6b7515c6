//! conv_im2col on VAE-style channels-last convolutions: the rewritten graph
//! computes what the convs did, and the weight transform is a load-time
//! derivation of the stored conv weight that the checkpoint loader applies.

mod common;

use common::{count, random_inputs, run};
use fluxc_artifact::WeightSource;
use fluxc_ir::{verify, DType, GraphBuilder, Op};
use fluxc_passes::conv_im2col::conv_im2col;
use fluxc_passes::hoist_weights::hoist_weights;

#[test]
fn convs_become_im2col_and_linears_and_compute_the_same() {
    // A padded 3×3 conv after an upsampling, a strided conv with a
    // rectangular kernel, and a grouped conv that must stay.
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [2, 5, 6, 8]).unwrap();
    let up = b.upsample_nearest(x, 2).unwrap();
    let w3 = b.weight("conv.weight", DType::F32, [12, 8, 3, 3]).unwrap();
    let b3 = b.weight("conv.bias", DType::F32, [12]).unwrap();
    let y = b.conv2d(up, w3, Some(b3), 1, 1).unwrap();
    let y = b.add(y, y).unwrap();
    let ws = b.weight("down.weight", DType::F32, [4, 8, 3, 2]).unwrap();
    let strided = Op::Conv2d {
        stride: [2, 1],
        padding: [1, 0],
        groups: 1,
    };
    let z = b.op(strided, &[x, ws]).unwrap();
    let wg = b
        .weight("grouped.weight", DType::F32, [4, 4, 3, 3])
        .unwrap();
    let grouped = Op::Conv2d {
        stride: [1, 1],
        padding: [1, 1],
        groups: 2,
    };
    let g = b.op(grouped, &[x, wg]).unwrap();
    b.output("y", y).unwrap();
    b.output("z", z).unwrap();
    b.output("g", g).unwrap();
    let before = b.finish().unwrap();

    let mut after = before.clone();
    assert_eq!(conv_im2col(&mut after).unwrap(), 2);
    verify(&after).unwrap();
    assert_eq!(count(&after, "conv2d"), 1, "the grouped conv stays");
    assert_eq!(count(&after, "im2col"), 2);
    assert_eq!(count(&after, "linear"), 2);
    let inputs = random_inputs(&before, 5);
    for out in ["y", "z", "g"] {
        let error = run(&after, &inputs, out).rel_l2(&run(&before, &inputs, out));
        assert!(error < 1e-6, "{out}: {error}");
    }

    // The weight reorder becomes a derivation of the stored weight.
    let table = hoist_weights(&mut after).unwrap();
    let name = "conv.weight.permute(0,2,3,1).view(12,72)";
    assert_eq!(
        table[name],
        WeightSource::Reshape {
            of: Box::new(WeightSource::Permute {
                of: Box::new(WeightSource::tensor("conv.weight")),
                perm: vec![0, 2, 3, 1],
            }),
            shape: vec![12, 72],
        }
    );
    assert!(after.find_input(name).is_some());
    assert_eq!(count(&after, "permute"), 0, "no weight work is left");
}
