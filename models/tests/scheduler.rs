//! Tests of the host-side denoising schedule (`fluxc_models::scheduler`):
//! hand-checked schedules for FLUX.1-schnell and FLUX.1-dev, the timestep
//! arithmetic the transformer sees, latent packing and position ids, errors
//! on bad input, and — when `tests/fixtures/scheduler.json` exists — the
//! schedules diffusers' own scheduler produced.

use std::path::PathBuf;

use fluxc_ir::DType;
use fluxc_models::scheduler::{
    calculate_shift, guidance_input, image_seq_len, latent_image_ids, latent_shape, pack_latents,
    text_ids, unpack_latents, FlowMatchEuler, FlowMatchEulerConfig, SchedulerError, TimeShiftType,
    TorchDevice, MAX_IMAGE_SEQ_LEN, MAX_STEPS,
};

/// `|a − b| ≤ tol` for every pair, with the index in the message.
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (diff {:e})",
            (g as f64 - w).abs()
        );
    }
}

/// The dev shift written out independently in f64: `σ = 1 − i/N`, and
/// `σ' = e^mu / (e^mu + (1/σ − 1))`.
fn dev_sigma_f64(mu: f64, i: usize, n: usize) -> f64 {
    let sigma = if n == 1 {
        1.0
    } else {
        1.0 - i as f64 * (1.0 - 1.0 / n as f64) / (n - 1) as f64
    };
    let e = mu.exp();
    e / (e + (1.0 / sigma - 1.0))
}

#[test]
fn schnell_four_steps_is_the_unshifted_linspace() {
    let s = FlowMatchEuler::schnell().schedule(4, 4096).unwrap();
    assert_eq!(s.num_steps(), 4);
    assert_eq!(s.sigmas, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    assert_eq!(s.timesteps, vec![1000.0, 750.0, 500.0, 250.0]);
    assert_eq!(s.dt, vec![-0.25; 4]);
    // The pipeline computes mu for schnell too; it is just not used.
    assert!((s.mu - 1.15).abs() < 1e-12);
    // Same at any resolution: no dynamic shifting.
    let small = FlowMatchEuler::schnell().schedule(4, 1024).unwrap();
    assert_eq!(small.sigmas, s.sigmas);
}

#[test]
fn dev_28_steps_at_1024() {
    let sched = FlowMatchEuler::dev();
    let seq = image_seq_len(1024, 1024).unwrap();
    assert_eq!(seq, 4096);
    let s = sched.schedule(28, seq).unwrap();

    // mu by hand: the line through (256, 0.5) and (4096, 1.15) at 4096.
    assert!((s.mu - 1.15).abs() < 1e-12, "mu = {}", s.mu);
    assert_eq!(sched.mu(256).unwrap(), 0.5);

    assert_eq!(s.sigmas.len(), 29);
    assert_eq!(s.timesteps.len(), 28);
    assert_eq!(s.dt.len(), 28);
    assert_eq!(s.sigmas[0], 1.0, "σ = 1 is a fixed point of the shift");
    assert_eq!(s.timesteps[0], 1000.0);
    assert_eq!(s.sigmas[28], 0.0);

    // Middle values by hand. At i = 14, σ = 1/2 and σ' = sigmoid(1.15).
    let sigmoid = 1.0 / (1.0 + (-1.15f64).exp());
    assert!((s.sigmas[14] as f64 - sigmoid).abs() < 1e-6);
    assert!((sigmoid - 0.759_510_916).abs() < 1e-8);
    for i in [1, 7, 14, 21, 27] {
        let want = dev_sigma_f64(1.15, i, 28);
        assert_close(&format!("sigmas[{i}]"), &s.sigmas[i..=i], &[want], 1e-6);
        assert_close(
            &format!("timesteps[{i}]"),
            &s.timesteps[i..=i],
            &[want * 1000.0],
            1e-3,
        );
    }
    // Last nonzero: σ = 1/28, σ' = e^1.15 / (e^1.15 + 27).
    let last = 1.15f64.exp() / (1.15f64.exp() + 27.0);
    assert!((s.sigmas[27] as f64 - last).abs() < 1e-6);

    // Shifting pushes every sigma up, keeps them decreasing, and the dt
    // coefficients are the f32 differences, summing to −1.
    for i in 1..28 {
        assert!(s.sigmas[i] > 1.0 - i as f32 / 28.0);
        assert!(s.sigmas[i] < s.sigmas[i - 1]);
    }
    for i in 0..28 {
        assert_eq!(s.dt[i], s.sigmas[i + 1] - s.sigmas[i]);
        assert!(s.dt[i] < 0.0);
    }
    let total: f64 = s.dt.iter().map(|&d| d as f64).sum();
    assert!((total + 1.0).abs() < 1e-6);
}

#[test]
fn dev_shift_follows_resolution() {
    let sched = FlowMatchEuler::dev();
    // 768x1360 → 48 x 85 tokens; 512² → 32 x 32.
    assert_eq!(image_seq_len(768, 1360).unwrap(), 4080);
    assert_eq!(image_seq_len(512, 512).unwrap(), 1024);
    let mu_4080 = 0.5 + (4080.0 - 256.0) * 0.65 / 3840.0;
    let mu_1024 = 0.5 + (1024.0 - 256.0) * 0.65 / 3840.0;
    assert!((sched.mu(4080).unwrap() - mu_4080).abs() < 1e-12);
    assert!((sched.mu(1024).unwrap() - mu_1024).abs() < 1e-12);

    for (seq, mu, n) in [(4080, mu_4080, 28), (1024, mu_1024, 50)] {
        let s = sched.schedule(n, seq).unwrap();
        let want: Vec<f64> = (0..n).map(|i| dev_sigma_f64(mu, i, n)).collect();
        assert_close(&format!("sigmas at {seq}"), &s.sigmas[..n], &want, 1e-6);
    }
    // Less shift at lower resolution.
    let lo = sched.schedule(28, 1024).unwrap();
    let hi = sched.schedule(28, 4096).unwrap();
    assert!(lo.sigmas[14] < hi.sigmas[14]);
}

#[test]
fn static_and_linear_shifts_from_explicit_parameters() {
    // shift = 3 (SD3-style static shift): σ' = 3σ / (1 + 2σ).
    let cfg = FlowMatchEulerConfig {
        shift: 3.0,
        ..FlowMatchEulerConfig::SCHNELL
    };
    let s = FlowMatchEuler::new(cfg).unwrap().schedule(4, 4096).unwrap();
    let want: Vec<f64> = [1.0, 0.75, 0.5, 0.25]
        .iter()
        .map(|&x: &f64| 3.0 * x / (1.0 + 2.0 * x))
        .collect();
    assert_close("shift 3", &s.sigmas[..4], &want, 1e-7);

    // Linear time shift: σ' = mu / (mu + 1/σ − 1).
    let cfg = FlowMatchEulerConfig {
        time_shift_type: TimeShiftType::Linear,
        ..FlowMatchEulerConfig::DEV
    };
    let s = FlowMatchEuler::new(cfg).unwrap().schedule(4, 4096).unwrap();
    let want: Vec<f64> = [1.0, 0.75, 0.5, 0.25]
        .iter()
        .map(|&x: &f64| 1.15 / (1.15 + 1.0 / x - 1.0))
        .collect();
    assert_close("linear", &s.sigmas[..4], &want, 1e-6);
}

#[test]
fn one_step() {
    for sched in [FlowMatchEuler::schnell(), FlowMatchEuler::dev()] {
        let s = sched.schedule(1, 4096).unwrap();
        assert_eq!(s.sigmas, vec![1.0, 0.0]);
        assert_eq!(s.timesteps, vec![1000.0]);
        assert_eq!(s.dt, vec![-1.0]);
    }
}

#[test]
fn transformer_timesteps_per_dtype_and_device() {
    let s = FlowMatchEuler::schnell().schedule(4, 4096).unwrap();
    let cpu = s
        .transformer_timesteps(DType::F32, TorchDevice::Cpu)
        .unwrap();
    assert_eq!(cpu, vec![1.0, 0.75, 0.5, 0.25]);
    // CUDA multiplies by fl32(1/1000) = 0.001000000047497451: 750 × that is
    // 0.75000003562, nearer to 0.75 + 2^-24 (0.75000006) than to 0.75.
    let cuda = s
        .transformer_timesteps(DType::F32, TorchDevice::Cuda)
        .unwrap();
    let inv = 0.001_000_000_047_497_451_f64;
    assert_eq!(1.0f32 / 1000.0, inv as f32);
    let exact = 750.0 * inv;
    let (lo, hi) = (0.75f64, 0.75f64 + 2f64.powi(-24));
    assert!((exact - hi).abs() < (exact - lo).abs());
    assert_eq!(cuda[1], hi as f32);
    assert_eq!(cuda[1], f32::from_bits(0.75f32.to_bits() + 1));

    // bf16: t is rounded to bf16 first. 1000, 500 and 250 are exact, but 750
    // needs 9 significant bits and ties to even at 752; 752/1000 = 0.752 then
    // rounds to 193/256 (bf16 spacing in [0.5, 1) is 1/256).
    assert_eq!(DType::BF16.round(750.0), 752.0);
    let bf = s
        .transformer_timesteps(DType::BF16, TorchDevice::Cuda)
        .unwrap();
    assert_eq!(bf, vec![1.0, 193.0 / 256.0, 0.5, 0.25]);
    let bf_cpu = s
        .transformer_timesteps(DType::BF16, TorchDevice::Cpu)
        .unwrap();
    assert_eq!(bf_cpu, bf);
    for &x in &bf {
        assert_eq!(DType::BF16.round(x), x);
    }

    // dev: f32 timesteps divided back land within an ulp of the sigmas.
    let d = FlowMatchEuler::dev().schedule(28, 4096).unwrap();
    let t = d
        .transformer_timesteps(DType::F32, TorchDevice::Cpu)
        .unwrap();
    for (i, (&x, &sigma)) in t.iter().zip(&d.sigmas).enumerate() {
        assert!((x - sigma).abs() <= 2.0 * f32::EPSILON * sigma, "step {i}");
    }

    assert_eq!(
        s.transformer_timesteps(DType::I32, TorchDevice::Cpu),
        Err(SchedulerError::DType(DType::I32))
    );
}

#[test]
fn guidance() {
    assert_eq!(guidance_input(3.5, DType::F32).unwrap(), 3.5);
    assert_eq!(guidance_input(3.5, DType::BF16).unwrap(), 3.5);
    // 3.3 is not exact in bf16 (7 mantissa bits): 3.296875.
    assert_eq!(guidance_input(3.3, DType::BF16).unwrap(), 3.296875);
    assert!(guidance_input(f64::NAN, DType::F32).is_err());
    assert!(guidance_input(1e300, DType::F32).is_err());
    assert!(guidance_input(3.5, DType::F8E4M3).is_err());
}

#[test]
fn euler_steps_follow_the_flow() {
    let s = FlowMatchEuler::schnell().schedule(4, 4096).unwrap();
    let mut x = vec![1.0f32, 2.0];
    s.euler_step(0, &mut x, &[1.0, -1.0]).unwrap();
    assert_eq!(x, vec![0.75, 2.25]);

    // A straight flow x_σ = (1−σ)·x0 + σ·ε has constant velocity ε − x0;
    // Euler steps from σ = 1 (pure noise) down to 0 land on x0.
    let x0 = [0.5f32, -1.25, 2.0, 0.0];
    let eps = [-0.3f32, 0.7, 1.1, -2.0];
    let v: Vec<f32> = eps.iter().zip(&x0).map(|(e, x)| e - x).collect();
    for sched in [FlowMatchEuler::schnell(), FlowMatchEuler::dev()] {
        let s = sched.schedule(28, 4096).unwrap();
        let mut x = eps.to_vec();
        for i in 0..s.num_steps() {
            s.euler_step(i, &mut x, &v).unwrap();
        }
        let want: Vec<f64> = x0.iter().map(|&a| a as f64).collect();
        assert_close("flow end", &x, &want, 1e-5);
    }

    assert_eq!(
        s.euler_step(4, &mut x, &[0.0, 0.0]),
        Err(SchedulerError::StepIndex {
            index: 4,
            num_steps: 4
        })
    );
    assert!(matches!(
        s.euler_step(0, &mut x, &[0.0]),
        Err(SchedulerError::Shape(_))
    ));
}

#[test]
fn latent_sizes() {
    assert_eq!(latent_shape(1024, 1024).unwrap(), (128, 128));
    assert_eq!(latent_shape(768, 1360).unwrap(), (96, 170));
    // Not multiples of 16: rounded down, as prepare_latents does.
    assert_eq!(latent_shape(1000, 1030).unwrap(), (124, 128));
    assert_eq!(image_seq_len(1000, 1030).unwrap(), 62 * 64);
    assert_eq!(
        latent_shape(15, 1024),
        Err(SchedulerError::ImageSize {
            height: 15,
            width: 1024
        })
    );
    assert!(image_seq_len(0, 0).is_err());
}

#[test]
fn pack_matches_the_pipeline_layout() {
    // [1, 1, 2, 4]: rows (0 1 2 3) and (4 5 6 7) make two 2x2 patches.
    let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
    let p = pack_latents(&x, 1, 1, 2, 4).unwrap();
    assert_eq!(p, vec![0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);

    // [1, 2, 2, 2]: one token, features channel-major then (dy, dx).
    let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
    let p = pack_latents(&x, 1, 2, 2, 2).unwrap();
    assert_eq!(p, x);

    // [1, 1, 4, 2]: two tokens, one per row pair.
    let p = pack_latents(&x, 1, 1, 4, 2).unwrap();
    assert_eq!(p, x);

    // [1, 2, 2, 4]: element (c, y, x) lands at token x/2, feature 4c + 2y + x%2.
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let p = pack_latents(&x, 1, 2, 2, 4).unwrap();
    for c in 0..2 {
        for y in 0..2 {
            for xx in 0..4 {
                let src = (c * 2 + y) * 4 + xx;
                let dst = (xx / 2) * 8 + 4 * c + 2 * y + xx % 2;
                assert_eq!(p[dst], x[src]);
            }
        }
    }
}

#[test]
fn pack_unpack_round_trip() {
    let (b, c, h, w) = (2, 3, 4, 6);
    let x: Vec<f32> = (0..b * c * h * w).map(|v| v as f32 * 0.5 - 7.0).collect();
    let p = pack_latents(&x, b, c, h, w).unwrap();
    assert_eq!(p.len(), x.len());
    assert_ne!(p, x);
    assert_eq!(unpack_latents(&p, b, c, h, w).unwrap(), x);
    // And the other way round.
    assert_eq!(
        pack_latents(&unpack_latents(&x, b, c, h, w).unwrap(), b, c, h, w).unwrap(),
        x
    );
    // FLUX's own shape at 256² (16 latent channels, 32x32 latent).
    let (h, w) = latent_shape(256, 256).unwrap();
    let x: Vec<f32> = (0..16 * h * w).map(|v| (v % 251) as f32).collect();
    let p = pack_latents(&x, 1, 16, h, w).unwrap();
    assert_eq!(p.len(), image_seq_len(256, 256).unwrap() * 64);
    assert_eq!(unpack_latents(&p, 1, 16, h, w).unwrap(), x);
}

#[test]
fn pack_rejects_bad_shapes() {
    let x = vec![0.0f32; 12];
    for (b, c, h, w) in [
        (1, 1, 3, 4),
        (1, 1, 4, 3),
        (1, 3, 2, 4),
        (0, 1, 2, 2),
        (1, 0, 2, 2),
    ] {
        assert!(
            matches!(pack_latents(&x, b, c, h, w), Err(SchedulerError::Shape(_))),
            "{b} {c} {h} {w}"
        );
        assert!(matches!(
            unpack_latents(&x, b, c, h, w),
            Err(SchedulerError::Shape(_))
        ));
    }
    // Overflowing products are errors, not panics.
    assert!(pack_latents(&x, usize::MAX, 2, 2, 2).is_err());
    assert!(unpack_latents(&x, 2, usize::MAX / 2 + 1, 2, 2).is_err());
}

#[test]
fn image_ids_of_a_2x3_grid() {
    let ids = latent_image_ids(2, 3).unwrap();
    #[rustfmt::skip]
    let want = vec![
        0.0, 0.0, 0.0,
        0.0, 0.0, 1.0,
        0.0, 0.0, 2.0,
        0.0, 1.0, 0.0,
        0.0, 1.0, 1.0,
        0.0, 1.0, 2.0,
    ];
    assert_eq!(ids, want);
    let big = latent_image_ids(64, 64).unwrap();
    assert_eq!(big.len(), 4096 * 3);
    assert_eq!(&big[big.len() - 3..], &[0.0, 63.0, 63.0]);
    assert!(latent_image_ids(0, 3).is_err());
    assert!(latent_image_ids(3, 0).is_err());
    assert!(latent_image_ids(usize::MAX, 2).is_err());
    assert_eq!(text_ids(2).unwrap(), vec![0.0; 6]);
    assert!(text_ids(0).is_err());
}

#[test]
fn bad_inputs_are_errors() {
    let dev = FlowMatchEuler::dev();
    assert_eq!(
        dev.schedule(0, 4096),
        Err(SchedulerError::NumSteps {
            got: 0,
            max: MAX_STEPS
        })
    );
    assert!(matches!(
        dev.schedule(MAX_STEPS + 1, 4096),
        Err(SchedulerError::NumSteps { .. })
    ));
    assert!(matches!(
        dev.schedule(usize::MAX, 4096),
        Err(SchedulerError::NumSteps { .. })
    ));
    assert_eq!(
        dev.schedule(28, 0),
        Err(SchedulerError::ImageSeqLen {
            got: 0,
            max: MAX_IMAGE_SEQ_LEN
        })
    );
    assert!(matches!(
        FlowMatchEuler::schnell().schedule(4, usize::MAX),
        Err(SchedulerError::ImageSeqLen { .. })
    ));
    // mu ≈ 178 at 2^20 tokens: e^mu overflows f32.
    assert!(matches!(
        dev.schedule(28, MAX_IMAGE_SEQ_LEN),
        Err(SchedulerError::Mu { .. })
    ));
    // The largest step count still works.
    assert_eq!(
        dev.schedule(MAX_STEPS, 4096).unwrap().num_steps(),
        MAX_STEPS
    );

    let bad_configs = [
        FlowMatchEulerConfig {
            num_train_timesteps: 0,
            ..FlowMatchEulerConfig::DEV
        },
        FlowMatchEulerConfig {
            shift: 0.0,
            ..FlowMatchEulerConfig::SCHNELL
        },
        FlowMatchEulerConfig {
            shift: f64::NAN,
            ..FlowMatchEulerConfig::SCHNELL
        },
        FlowMatchEulerConfig {
            max_shift: f64::INFINITY,
            ..FlowMatchEulerConfig::DEV
        },
        FlowMatchEulerConfig {
            base_image_seq_len: 4096,
            ..FlowMatchEulerConfig::DEV
        },
    ];
    for cfg in bad_configs {
        assert!(
            matches!(FlowMatchEuler::new(cfg), Err(SchedulerError::Config { .. })),
            "{cfg:?}"
        );
    }
    // A linear shift needs mu > 0.
    let neg = FlowMatchEuler::new(FlowMatchEulerConfig {
        time_shift_type: TimeShiftType::Linear,
        base_shift: -1.0,
        max_shift: -0.5,
        ..FlowMatchEulerConfig::DEV
    })
    .unwrap();
    assert!(matches!(
        neg.schedule(4, 256),
        Err(SchedulerError::Mu { .. })
    ));
    assert!(calculate_shift(4096, 256, 256, 0.5, 1.15).is_err());
    assert!(calculate_shift(4096, 256, 4096, f64::MAX, -f64::MAX).is_err());
}

// ---------------------------------------------------------------------------
// Against diffusers (tests/fixtures/scheduler.json)

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/scheduler.json")
}

fn f32s(v: &serde_json::Value, key: &str) -> Vec<f32> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("fixture key `{key}` is not an array"))
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Max |a − b| and how many pairs are bit-identical.
fn compare(what: &str, got: &[f32], want: &[f32]) -> (f64, usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut max = 0.0f64;
    let mut exact = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        assert!(d <= 1e-6, "{what}[{i}]: fluxc {g}, diffusers {w}");
        max = max.max(d);
        exact += usize::from(g.to_bits() == w.to_bits());
    }
    (max, exact)
}

#[test]
fn matches_diffusers_fixture() {
    let path = fixture_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let root: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = root["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let sched = match case["model"].as_str().unwrap() {
            "schnell" => FlowMatchEuler::schnell(),
            "dev" => FlowMatchEuler::dev(),
            other => panic!("unknown model {other}"),
        };
        let n = case["num_steps"].as_u64().unwrap() as usize;
        let (h, w) = (
            case["height"].as_u64().unwrap() as usize,
            case["width"].as_u64().unwrap() as usize,
        );
        let seq = image_seq_len(h, w).unwrap();
        assert_eq!(
            seq as u64,
            case["image_seq_len"].as_u64().unwrap(),
            "{name}"
        );
        let s = sched.schedule(n, seq).unwrap();
        let mu = case["mu"].as_f64().unwrap();
        assert!((s.mu - mu).abs() <= 1e-12, "{name}: mu {} vs {mu}", s.mu);

        let mut report = Vec::new();
        let mut check = |what: &str, got: &[f32], key: &str| {
            if case.get(key).is_some() {
                let (max, exact) = compare(&format!("{name} {what}"), got, &f32s(case, key));
                report.push(format!(
                    "{what}: max diff {max:e}, {exact}/{} exact",
                    got.len()
                ));
            }
        };
        check("sigmas", &s.sigmas, "sigmas");
        check("sigmas (cuda)", &s.sigmas, "sigmas_cuda");
        check("timesteps", &s.timesteps, "timesteps");
        for (dtype, device, key) in [
            (DType::F32, TorchDevice::Cpu, "transformer_timestep_f32_cpu"),
            (
                DType::BF16,
                TorchDevice::Cpu,
                "transformer_timestep_bf16_cpu",
            ),
            (
                DType::F32,
                TorchDevice::Cuda,
                "transformer_timestep_f32_cuda",
            ),
            (
                DType::BF16,
                TorchDevice::Cuda,
                "transformer_timestep_bf16_cuda",
            ),
        ] {
            let got = s.transformer_timesteps(dtype, device).unwrap();
            check(key, &got, key);
        }

        // scheduler.step replayed.
        let mut x = f32s(case, "step_x0");
        let velocities = case["step_velocities"].as_array().unwrap();
        assert_eq!(velocities.len(), n);
        for (i, v) in velocities.iter().enumerate() {
            let v: Vec<f32> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            s.euler_step(i, &mut x, &v).unwrap();
        }
        check("step", &x, "step_x_final");
        println!("{name}: {}", report.join("; "));
    }
}
