#!/usr/bin/env python3
"""Compares `fluxc generate` with diffusers' FluxPipeline on the files
benches/peers/pipeline_reference.py wrote, and writes the report.

    python3 benches/peers/compare_pipeline.py --dir /tmp/fluxc-pipe \\
        --fluxc LABEL LATENTS.safetensors IMAGE.png GENERATE.log [--fluxc ...] \\
        --commit SHA --command "..." --out OUT

For each fluxc run: seconds per image (the median of `fluxc generate
--replays`, read from its log: CUDA-graph replays, embeddings to decoded
image), the final latents' relative L2 error vs diffusers' fp32
pipeline and its ratio to diffusers' own bf16 error (issue 8's bound:
1.5), and the decoded image's PSNR vs the fp32 pipeline's (both as 8-bit
images).
"""

import argparse
import datetime
import json
import math
import pathlib
import re

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

BOUND = 1.5


def rel_l2(x, ref):
    return ((x - ref).norm() / ref.norm()).item()


def psnr_u8(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=pathlib.Path, required=True)
    p.add_argument("--fluxc", nargs=4, action="append", default=[],
                   metavar=("LABEL", "LATENTS", "IMAGE", "LOG"))
    p.add_argument("--commit", default="unknown")
    p.add_argument("--command", default="")
    p.add_argument("--name", default="pipeline")
    p.add_argument("--out", type=pathlib.Path, required=True)
    a = p.parse_args()
    ref = load_file(str(a.dir / "reference.safetensors"))
    meta = json.loads((a.dir / "reference.json").read_text())
    fp32 = ref["latents_fp32"]
    # diffusers' postprocess of the fp32 image: [0, 1] -> round(255 x).
    image_ref = (ref["image_fp32"][0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    rows = [{"system": "diffusers 0.42.1 FluxPipeline eager bf16", "s_per_image": meta["diffusers_bf16_s"],
             "latents_rel_l2_vs_fp32": meta["diffusers_bf16_latents_rel_l2"], "psnr_db_vs_fp32": None}]
    checks = []
    for label, latents, image, log in a.fluxc:
        got = load_file(latents)
        got = got.get("latents", next(iter(got.values()))).float().reshape(fp32.shape)
        err = rel_l2(got, fp32)
        img = np.asarray(Image.open(image).convert("RGB"))
        found = re.search(r"runs of the whole pipeline .*: median ([0-9.]+) ms", pathlib.Path(log).read_text())
        seconds = float(found.group(1)) / 1e3 if found else None
        rows.append({"system": f"fluxc {label} (one CUDA graph)", "s_per_image": seconds,
                     "latents_rel_l2_vs_fp32": err, "psnr_db_vs_fp32": psnr_u8(img, image_ref)})
        ratio = err / meta["diffusers_bf16_latents_rel_l2"]
        checks.append({"fluxc": label, "error_ratio_vs_diffusers_bf16": ratio, "bound": BOUND,
                       "within_bound": ratio <= BOUND,
                       "speedup_vs_diffusers": meta["diffusers_bf16_s"] / seconds if seconds else None})
    report = {"date": datetime.date.today().isoformat(), "commit": a.commit, "command": a.command,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "reference": meta, "rows": rows, "checks": checks}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# {a.name}: FLUX.1-{meta['variant']} pipeline, {meta['steps']} steps + VAE decode, "
             f"{meta['height']}×{meta['width']}, {meta['text_tokens']} text tokens, on {report['gpu']}", "",
             f"Date {report['date']}, commit `{a.commit}`.", "", f"Command: `{a.command}`", "",
             "From text embeddings and initial latents to the decoded image (text encoding excluded on both "
             "sides); same random weights, embeddings and latents.", "",
             "| system | s / image | final latents rel. L2 vs fp32 | image PSNR vs fp32 (dB) |",
             "| --- | ---: | ---: | ---: |"]
    for r in rows:
        psnr = "—" if r["psnr_db_vs_fp32"] is None else f"{r['psnr_db_vs_fp32']:.1f}"
        secs = "—" if r["s_per_image"] is None else f"{r['s_per_image']:.3f}"
        lines.append(f"| {r['system']} | {secs} | {r['latents_rel_l2_vs_fp32']:.3e} | {psnr} |")
    lines.append("")
    for c in checks:
        verdict = "within" if c["within_bound"] else "NOT within"
        speed = f"{c['speedup_vs_diffusers']:.2f}× diffusers eager; " if c["speedup_vs_diffusers"] else ""
        lines.append(f"- fluxc {c['fluxc']}: {speed}latents error / diffusers bf16's = "
                     f"{c['error_ratio_vs_diffusers_bf16']:.3f} ({verdict} the bound {BOUND}).")
    (a.out / f"{a.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
