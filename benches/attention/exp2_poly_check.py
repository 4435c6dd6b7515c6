# CPU check (numpy) of the fp8 attention kernel's h2_exp2_fma_poly
# (codegen/kernels/attention_fp8.cu): python3 benches/attention/exp2_poly_check.py
# exits non-zero if the error grows past what was measured when it was chosen.
# Exact emulation of its per-half arithmetic after its first FMA, for every f16
# x = s * factor + neg in [-16, 8.75], compared with exact 2^x after e4m3
# rounding.
import numpy as np
h = np.float16
def f16(v): return np.asarray(v, dtype=np.float64).astype(np.float16)
def bits(v): return np.asarray(v, dtype=np.float16).view(np.uint16).astype(np.uint32)
def of_bits(b): return np.asarray(b, dtype=np.uint16).view(np.float16)
def fma(a, b, c): return f16(a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64))
def e4m3(v):
    v = np.asarray(v, dtype=np.float64); out = np.zeros_like(v); pos = v > 0
    x = v[pos]; e = np.maximum(np.floor(np.log2(x)), -6); step = 2.0 ** (e - 3)
    out[pos] = np.minimum(np.round(x / step) * step, 448.0); return out
xs = of_bits(np.arange(65536, dtype=np.uint32).astype(np.uint16))
xs = xs[np.isfinite(xs) & (xs >= h(-16)) & (xs <= h(8.75))]
c2, c1, low, magic = (of_bits(np.array([v]))[0] for v in (0x0798, 0x0D9C, 0x1000, 0x640B))
# the degree-2 coefficients (0x3398 = 0.2373, 0x399C = 0.7012, 1.0) times 2^-11
assert float(c2) == 0.2373046875 * 2**-11 and float(c1) == 0.701171875 * 2**-11
assert float(low) == 2**-11 and float(magic) == 1035
x = np.maximum(xs, h(-11))                               # max.f16x2
t = f16(x.astype(np.float64) + magic)                    # 1024 + round(x) + 11
n = f16(t.astype(np.float64) - magic)
f = f16(x.astype(np.float64) - n.astype(np.float64))     # in [-1/2, 1/2], exact
p = fma(f, np.full_like(f, c2), np.full_like(f, c1))
p = fma(p, f, np.full_like(f, low))                      # 2^f * 2^-11
y32 = (bits(t) & 0x3F) * 1024 + bits(p)                  # mad.lo.u32, per half
assert np.all(y32 < 0x7C00), "no carry out of a half, no infinity"
y = of_bits(y32.astype(np.uint16))
exact = e4m3(2.0 ** xs.astype(np.float64)); got = e4m3(y.astype(np.float64))
ok = xs >= -9
rel = np.max(np.abs(y[ok].astype(np.float64) / 2.0 ** xs[ok].astype(np.float64) - 1))
print("inputs", xs.size, "e4m3 differing:", (got != exact).sum(), "max |f|", np.abs(f).max())
print("max rel err vs 2^x (x >= -9):", rel)
print("values for x<-11 (should be 2^-11, 0 in e4m3):", np.unique(y[xs < -11])[:4])
assert rel <= 3.5e-3, rel
assert (got != exact).mean() <= 0.005, (got != exact).mean()
assert np.all(got[xs < -11] == 0)
print("OK")
