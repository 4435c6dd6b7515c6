# CPU check (numpy) of the fp8 attention kernel's h2_exp2_fma_poly
# (codegen/kernels/attention_fp8.cu): python3 benches/attention/exp2_poly_check.py
# exits non-zero if the error grows past what was measured when it was chosen.
# Exact emulation of h2_exp2_fma_poly's per-half arithmetic (after its first FMA):
# every f16 x in [-16, 8.75], compared with exact 2^x after e4m3 rounding.
import numpy as np
h = np.float16
def f16(v): return np.asarray(v, dtype=np.float64).astype(np.float16)
def fma(a, b, c): return f16(a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64))
def e4m3(v):
    v = np.asarray(v, dtype=np.float64); out = np.zeros_like(v); pos = v > 0
    x = v[pos]; e = np.maximum(np.floor(np.log2(x)), -6); step = 2.0 ** (e - 3)
    out[pos] = np.minimum(np.round(x / step) * step, 448.0); return out
xs = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
xs = xs[np.isfinite(xs) & (xs >= h(-16)) & (xs <= h(8.75))]
c2, c1, one, lo, magic = (np.array([v], dtype=np.uint16).view(np.float16)[0] for v in (0x3398, 0x399C, 0x3C00, 0xCA00, 0x6600))
x = np.maximum(xs, lo)
t = f16(x.astype(np.float64) + magic)
n = f16(t.astype(np.float64) - magic)
f = f16(x.astype(np.float64) - n.astype(np.float64))
p = fma(f, np.full_like(f, c2), np.full_like(f, c1))
p = fma(p, f, np.full_like(f, one))
e = (t.view(np.uint16).astype(np.uint32) << 10) & 0xFC00
y = ((p.view(np.uint16).astype(np.uint32) + e) & 0xFFFF).astype(np.uint16).view(np.float16)
exact = e4m3(2.0 ** xs.astype(np.float64)); got = e4m3(y.astype(np.float64))
print("inputs", xs.size, "e4m3 differing:", (got != exact).sum(), "max |f|", np.abs(f).max())
ok = xs >= -9
print("max rel err vs 2^x (x >= -9):", np.max(np.abs(y[ok].astype(np.float64) / 2.0 ** xs[ok].astype(np.float64) - 1)))
rel = np.max(np.abs(y[ok].astype(np.float64) / 2.0 ** xs[ok].astype(np.float64) - 1))
print("values for x<-12 (should be ~2^-12):", np.unique(y[xs < -12])[:4])
assert rel <= 3.5e-3, rel
assert (got != exact).mean() <= 0.005, (got != exact).mean()
assert np.all(np.abs(y[xs < -12].astype(np.float64) - 2.0 ** -12) <= 2.0 ** -20)
print("OK")
