#!/usr/bin/env python3
"""Library floors of the FLUX.1 transformer forward: every GEMM of the
forward timed alone through cuBLAS (bf16 `torch.matmul`) and, for the
linears fluxc's default fp8 policy quantizes, through PyTorch's row-wise fp8
`torch._scaled_mm`; attention through cuDNN's SDPA (bf16). Summed per
forward, they say how far a whole forward is from what the libraries do
one call at a time (quantization, norms and other kernels not counted).

    python3 benches/peers/floors.py --dir /tmp/flux --text-tokens 512

The GEMM list is the one fluxc runs after q/k/v fusion (312 for the
FLUX.1 transformer: per double block the image and text q/k/v, out and MLP
linears and the two adaLN GEMVs; per single block q/k/v+MLP, out and the
adaLN GEMV; the embedders and the output head). Writes `floors.json` under
--dir.
"""

import argparse
import json
import pathlib
import statistics

import torch
import torch.nn.functional as F

HIDDEN, HEADS, HEAD_DIM, DOUBLE, SINGLE = 3072, 24, 128, 19, 38


def gemms(image_tokens, text_tokens, guidance):
    """(rows, in, out, count, fp8-policy) of every linear of one forward."""
    s, t, h = image_tokens, text_tokens, HIDDEN
    g = [
        (s, 64, h, 1, False), (t, 4096, h, 1, False),            # x_embedder, context_embedder
        (1, 256, h, 1, False), (1, h, h, 1, False),               # timestep embedder
        (1, 768, h, 1, False), (1, h, h, 1, False),               # pooled text embedder
        (1, h, 2 * h, 1, False), (s, h, 64, 1, False),            # norm_out, proj_out
    ]
    if guidance:
        g += [(1, 256, h, 1, False), (1, h, h, 1, False)]
    g += [
        (1, h, 6 * h, 2 * DOUBLE, False),                         # adaLN of both streams
        (s, h, 3 * h, DOUBLE, True), (t, h, 3 * h, DOUBLE, True),   # fused q/k/v
        (s, h, h, DOUBLE, True), (t, h, h, DOUBLE, True),           # attention out
        (s, h, 4 * h, DOUBLE, True), (t, h, 4 * h, DOUBLE, True),   # MLP up
        (s, 4 * h, h, DOUBLE, True), (t, 4 * h, h, DOUBLE, True),   # MLP down
        (1, h, 3 * h, SINGLE, False),                             # single-block adaLN
        (s + t, h, 7 * h, SINGLE, True),                          # q/k/v + MLP
        (s + t, 5 * h, h, SINGLE, True),                          # out
    ]
    return g


def median_ms(fn, warmup=5, repeats=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bf16_ms(m, k, n):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    return median_ms(lambda: torch.matmul(x, w.t()))


def fp8_row_ms(m, k, n):
    x = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
    w = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
    sx = torch.rand(m, 1, device="cuda") + 0.5
    sw = torch.rand(1, n, device="cuda") + 0.5
    return median_ms(lambda: torch._scaled_mm(x, w.t(), scale_a=sx, scale_b=sw, out_dtype=torch.bfloat16))


def attention_ms(tokens):
    q, k, v = (torch.randn(1, HEADS, tokens, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return median_ms(lambda: F.scaled_dot_product_attention(q, k, v))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=pathlib.Path, required=True)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--guidance", action="store_true", help="FLUX.1-dev's guidance embedder")
    a = p.parse_args()
    image = (a.height // 16) * (a.width // 16)
    bf16_total = fp8_total = 0.0
    shapes = []
    for m, k, n, count, quantized in gemms(image, a.text_tokens, a.guidance):
        t_bf16 = bf16_ms(m, k, n)
        t_fp8 = fp8_row_ms(m, k, n) if quantized else t_bf16
        bf16_total += count * t_bf16
        fp8_total += count * t_fp8
        shapes.append({"m": m, "k": k, "n": n, "count": count, "bf16_ms": t_bf16, "fp8_row_ms": t_fp8 if quantized else None})
        print(f"gemm {m}x{k}x{n} x{count}: bf16 {t_bf16:.4f} ms" + (f", fp8 row {t_fp8:.4f} ms" if quantized else ""),
              flush=True)
    attention = attention_ms(image + a.text_tokens) * (DOUBLE + SINGLE)
    floors = {
        "gemm_bf16_ms": bf16_total,
        "gemm_fp8_row_ms": fp8_total,
        "attention_cudnn_bf16_ms": attention,
        "floor_bf16_ms": bf16_total + attention,
        "floor_fp8_row_ms": fp8_total + attention,
        "gemms": shapes,
    }
    (a.dir / "floors.json").write_text(json.dumps(floors, indent=2))
    print(f"floors: bf16 {floors['floor_bf16_ms']:.1f} ms, fp8 row {floors['floor_fp8_row_ms']:.1f} ms "
          f"(attention {attention:.1f} ms)", flush=True)


if __name__ == "__main__":
    main()
