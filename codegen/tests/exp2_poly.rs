//! The fp8 attention kernel's exponential on the FMA pipe
//! (`h2_exp2_fma_poly` in `kernels/attention_fp8.cu`) is accurate enough for
//! P in e4m3, checked on the CPU for every f16 input.
//!
//! The test reads the function's instructions and constants out of the
//! rendered kernel, so it checks what ships: if the assembly changes, the
//! instruction list below no longer matches and the emulation must be
//! updated with it. Each half of an f16 pair is emulated exactly: f16
//! arithmetic rounds once to nearest even (an f64 holds every sum and
//! product of f16s here exactly), integer steps act on the bits.

use std::collections::HashMap;

use fluxc_codegen::attention_fp8::render_attention_fp8;
use half::f16;

/// The instructions of `h2_exp2_fma_poly` after its constants, in order,
/// as the emulation in [`exp2_poly`] performs them.
const EMULATED: [&str; 9] = [
    "fma.rn.f16x2 x, %1, %2, %3;",
    "max.f16x2 x, x, lo;",
    "add.rn.f16x2 t, x, magic;",
    "sub.rn.f16x2 n, t, magic;",
    "sub.rn.f16x2 f, x, n;",
    "fma.rn.f16x2 p, f, c2, c1;",
    "fma.rn.f16x2 p, p, f, c0;",
    "and.b32 e, t, 0x003F003F;",
    "mad.lo.u32 %0, e, 1024, p;",
];

/// The function's assembly: its constants (`mov.b32 name, 0x…;`, one f16
/// pattern in both halves) and its other instructions in order.
fn shipped_poly() -> (HashMap<String, u16>, Vec<String>) {
    let source = render_attention_fp8(128).unwrap().source;
    let start = source
        .find("h2_exp2_fma_poly(unsigned int a")
        .expect("h2_exp2_fma_poly in the fp8 kernel");
    let body = &source[start..start + source[start..].find("return r;").unwrap()];
    let mut constants = HashMap::new();
    let mut instructions = Vec::new();
    for line in body.lines() {
        let Some(asm) = line.trim().strip_prefix('"') else {
            continue;
        };
        let Some(end) = asm.find("\\n") else { continue };
        let asm = asm[..end].trim_start_matches('{').trim();
        if asm.is_empty() || asm.starts_with(".reg") || asm == "}" {
            continue;
        }
        if let Some(mov) = asm.strip_prefix("mov.b32 ") {
            let (name, value) = mov.trim_end_matches(';').split_once(", ").unwrap();
            let bits = u32::from_str_radix(value.trim_start_matches("0x"), 16).unwrap();
            assert_eq!(
                bits >> 16,
                bits & 0xFFFF,
                "{name}: the same f16 in both halves"
            );
            constants.insert(name.to_string(), (bits & 0xFFFF) as u16);
        } else {
            instructions.push(asm.trim_end_matches("}").trim().to_string());
        }
    }
    (constants, instructions)
}

fn round(v: f64) -> f16 {
    f16::from_f64(v)
}

/// One half of `h2_exp2_fma_poly` for x = a * b + c (its first FMA's result).
fn exp2_poly(x: f16, k: &HashMap<String, u16>) -> f16 {
    let c = |name: &str| f16::from_bits(k[name]);
    let x = if x < c("lo") { c("lo") } else { x };
    let t = round(x.to_f64() + c("magic").to_f64());
    let n = round(t.to_f64() - c("magic").to_f64());
    let f = round(x.to_f64() - n.to_f64());
    let p = round(f.to_f64() * c("c2").to_f64() + c("c1").to_f64());
    let p = round(p.to_f64() * f.to_f64() + c("c0").to_f64());
    let e = u32::from(t.to_bits()) & 0x3F;
    let y = e * 1024 + u32::from(p.to_bits());
    // No carry out of the half (it would land in the other one), and no
    // infinity or NaN pattern.
    assert!(y < 0x7C00, "x = {x}: bits {y:#x}");
    f16::from_bits(y as u16)
}

/// v rounded to e4m3 (to nearest even, saturating at 448), for v >= 0.
fn e4m3(v: f64) -> f64 {
    if v <= 0.0 {
        return 0.0;
    }
    let step = 2f64.powf(v.log2().floor().max(-6.0) - 3.0);
    ((v / step).round_ties_even() * step).min(448.0)
}

#[test]
fn the_kernel_runs_the_emulated_instructions() {
    let (constants, instructions) = shipped_poly();
    assert_eq!(instructions, EMULATED, "update exp2_poly with the kernel");
    for name in ["lo", "magic", "c2", "c1", "c0"] {
        assert!(constants.contains_key(name), "constant {name}");
    }
}

#[test]
fn exp2_poly_is_within_e4m3_rounding_for_every_f16_input() {
    let (k, _) = shipped_poly();
    // The kernel's exponents: x = s * factor + (8 - max) <= 8, and P = 2^x
    // below 2^-10 rounds to 0 in e4m3.
    let inputs: Vec<f16> = (0..=u16::MAX)
        .map(f16::from_bits)
        .filter(|x| x.is_finite() && x.to_f64() >= -16.0 && x.to_f64() <= 8.75)
        .collect();
    let (mut worst, mut e4m3_differ) = (0f64, 0usize);
    for &x in &inputs {
        let y = exp2_poly(x, &k).to_f64();
        let exact = x.to_f64().exp2();
        if x.to_f64() >= -9.0 {
            worst = worst.max((y / exact - 1.0).abs());
        }
        if x.to_f64() < -11.0 {
            assert_eq!(e4m3(y), 0.0, "x = {x}: below the clamp, P must round to 0");
        }
        if e4m3(y) != e4m3(exact) {
            // Only at e4m3's rounding boundaries: one step, never more.
            let step = 2f64.powf(exact.log2().floor().max(-6.0) - 3.0);
            assert!((e4m3(y) - e4m3(exact)).abs() <= step * 1.0001, "x = {x}");
            e4m3_differ += 1;
        }
    }
    // Measured when the polynomial was chosen: 3.4e-3, and 174 of 37986
    // inputs one e4m3 step off (0.46%).
    assert!(worst <= 3.5e-3, "relative error {worst}");
    let share = e4m3_differ as f64 / inputs.len() as f64;
    assert!(
        share <= 0.005,
        "{e4m3_differ} of {} inputs differ in e4m3",
        inputs.len()
    );
}
