#!/usr/bin/env python3
"""The VAE decoder's reference on the GPU machine: diffusers' AutoencoderKL
with the configuration of a fluxc VAE preset (default flux-vae: FLUX.1's
decoder, one 1024×1024 image) and seeded random weights, as
tests/fixtures/make_vae_fixtures.py builds the tiny one.

    python3 benches/peers/vae_reference.py --out /tmp/fluxc-vae [--preset flux-vae]

Writes under --out:
    vae/                 save_pretrained checkpoint (what `fluxc run --weights` takes)
    io.safetensors       `z` [B, 16, h, w] and `sample` [B, 3, H, W]: the fp32
                         decode (NCHW, f32; `fluxc run --nchw` compares against it)
    reference.json       diffusers eager bf16: ms per decode (median of 10) and
                         its relative L2 error vs the fp32 decode
"""

import argparse
import json
import pathlib
import sys
import time

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"))
from make_vae_fixtures import diffusers_config, randomize  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--preset", default="flux-vae")
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)

    kwargs, shapes = diffusers_config(a.preset)
    gen = torch.Generator().manual_seed(3)
    vae = AutoencoderKL(**kwargs).to(torch.float32).eval()
    randomize(vae, gen)
    vae.save_pretrained(a.out / "vae")
    batch = shapes.get("batch", 1)
    h, w = shapes["height"] // 8, shapes["width"] // 8
    z = torch.randn(batch, kwargs["latent_channels"], h, w, generator=gen)

    vae = vae.to("cuda")
    with torch.no_grad():
        ref = vae.decode(z.cuda()).sample.float()
    save_file({"z": z.contiguous(), "sample": ref.cpu().contiguous()}, str(a.out / "io.safetensors"))

    vae = vae.to(torch.bfloat16)
    zb = z.cuda().to(torch.bfloat16)
    times = []
    with torch.no_grad():
        out = vae.decode(zb).sample.float()
        for _ in range(a.repeats):
            torch.cuda.synchronize()
            t = time.perf_counter()
            vae.decode(zb)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e3)
    err = ((out - ref).norm() / ref.norm()).item()
    times.sort()
    result = {
        "preset": a.preset,
        "diffusers_bf16_ms": times[len(times) // 2],
        "diffusers_bf16_rel_l2": err,
    }
    (a.out / "reference.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
