#!/usr/bin/env python3
"""Compares fluxc's and diffusers' transformer outputs with the fp32
reference and writes the forward report (JSON + markdown).

    python3 benches/peers/compare.py --dir /tmp/flux --fluxc-json fluxc.json \
        --commit abc123 --command "..." --out report
"""

import argparse
import datetime
import json
import pathlib

import torch
from safetensors.torch import load_file


def rel_l2(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=pathlib.Path, required=True)
    p.add_argument("--fluxc-json", type=pathlib.Path, required=True)
    p.add_argument("--fluxc-output", type=pathlib.Path, required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--command", default="")
    p.add_argument("--name", default="forward")
    p.add_argument("--out", type=pathlib.Path, required=True)
    a = p.parse_args()

    ref = load_file(a.dir / "ref_fp32.safetensors")["sample"]
    diffusers_out = load_file(a.dir / "diffusers_bf16.safetensors")["sample"]
    fluxc_out = load_file(a.fluxc_output)["sample"]
    diffusers = json.loads((a.dir / "diffusers.json").read_text())
    fluxc = json.loads(a.fluxc_json.read_text())

    err_diffusers = rel_l2(diffusers_out, ref)
    err_fluxc = rel_l2(fluxc_out, ref)
    d = diffusers["eager_bf16"]
    rows = [
        ("diffusers 0.42.1 eager bf16", d["median_ms"], d["min_ms"], d["max_ms"], err_diffusers, None),
        ("fluxc bf16 (CUDA graph)", fluxc["gpu_ms"]["median"], fluxc["gpu_ms"]["min"], fluxc["gpu_ms"]["max"],
         err_fluxc, fluxc["launch_us"]["median"]),
    ]
    report = {
        "date": datetime.date.today().isoformat(),
        "commit": a.commit,
        "command": a.command,
        "gpu": diffusers["versions"]["gpu"],
        "versions": diffusers["versions"],
        "rows": [
            {"system": r[0], "median_ms": r[1], "min_ms": r[2], "max_ms": r[3], "rel_l2_vs_fp32": r[4],
             "host_us_per_launch": r[5]}
            for r in rows
        ],
        "error_ratio_fluxc_over_diffusers": err_fluxc / err_diffusers,
        "speedup_vs_diffusers_eager": d["median_ms"] / fluxc["gpu_ms"]["median"],
        "fluxc": fluxc,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# {a.name}: FLUX.1 transformer forward on {report['gpu']}",
        "",
        f"Date {report['date']}, commit `{a.commit}`.",
        "",
        f"Command: `{a.command}`",
        "",
        "| system | median ms | min ms | max ms | rel. L2 vs fp32 | host µs / launch |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        host = f"{r[5]:.1f}" if r[5] is not None else "—"
        lines.append(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.3e} | {host} |")
    lines += [
        "",
        f"fluxc error / diffusers bf16 error = {report['error_ratio_fluxc_over_diffusers']:.3f} "
        f"(acceptance: ≤ 1.5); speed-up over diffusers eager = {report['speedup_vs_diffusers_eager']:.2f}×.",
        "",
    ]
    (a.out / f"{a.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
