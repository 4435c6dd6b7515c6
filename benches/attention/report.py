#!/usr/bin/env python3
"""Writes the attention microbenchmark's report (issue 6's table) from one run.

    python3 benches/attention/report.py OUT_DIR [--commit C] [--command CMD]

Reads OUT_DIR/attention.json (benches/attention/check.py: fluxc bf16 and
PyTorch's SDPA backends) and OUT_DIR/attention_fp8.json (check_fp8.py:
fluxc fp8), both written by `benches/peers/run_h200.sh`'s `attention` step
in the same call, and writes OUT_DIR/attention.md: per FLUX shape, each
kernel's µs and TFLOP/s, and each target of issue 6 met or not. Needs only
the standard library.
"""

import argparse
import datetime
import json
import math
import pathlib
import sys

# Issue 6's targets, TFLOP/s at every FLUX shape.
TARGETS = {"fluxc fp8": 950.0, "fluxc bf16": 620.0}
# Column name -> (which file, its key), in the table's order.
COLUMNS = {
    "fluxc fp8": ("fp8", "fluxc_fp8"),
    "fluxc fp8, whole tiles": ("fp8", "fluxc_fp8_whole_tiles"),
    "fluxc bf16": ("bf16", "fluxc_bf16"),
    "fluxc bf16, whole tiles": ("bf16", "fluxc_bf16_whole_tiles"),
    "cuDNN bf16": ("bf16", "cudnn"),
    "torch SDPA (default)": ("bf16", "torch_sdpa_default"),
    "torch flash": ("bf16", "torch_flash"),
}


def timings_by_shape(results):
    """{(b, h, s, skv): {"us": {...}, "tflops": {...}}} for head dim 128
    (check_fp8.py's entries name no head dim: it has only 128)."""
    return {tuple(t["shape"]): t for t in results.get("timings", []) if t.get("head_dim", 128) == 128}


def cell(timing, key):
    if timing is None or math.isnan(timing["us"].get(key, math.nan)):
        return "—", None
    tflops = timing["tflops"].get(key)
    return f"{timing['us'][key]:.1f} µs, {tflops:.0f}", tflops


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=pathlib.Path)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--command", default="benches/peers/run_h200.sh (STEPS with attention)")
    args = ap.parse_args()
    try:
        bf16 = json.loads((args.out_dir / "attention.json").read_text())
        fp8 = json.loads((args.out_dir / "attention_fp8.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"attention report: {e}")
    sources = {"bf16": timings_by_shape(bf16), "fp8": timings_by_shape(fp8)}
    shapes = sorted(set(sources["bf16"]) | set(sources["fp8"]), key=lambda s: s[2])
    lines = [
        f"# Attention microbenchmark, {bf16.get('gpu', 'unknown GPU')}",
        "",
        f"Date {datetime.date.today()}, commit `{args.commit}`, torch {bf16.get('torch', '?')}. "
        f"Command: `{args.command}`.",
        "Non-causal, head dim 128, TFLOP/s = 4·b·h·s·skv·d / t, bursts at full clock. "
        f"Correctness: bf16 {'all OK' if bf16.get('all_ok') else 'SOME FAILED'}, "
        f"fp8 {'all OK' if fp8.get('all_ok') else 'SOME FAILED'} (the logs). "
        "fluxc's kernels run as the runtime runs them, the last wave of query tiles split over their keys "
        "where that fills the SMs better; 'whole tiles' is every tile whole.",
        "",
        "| shape [b, h, s, d] | " + " | ".join(COLUMNS) + " |",
        "| --- |" + " ---: |" * len(COLUMNS),
    ]
    met = {name: [] for name in TARGETS}
    for shape in shapes:
        b, h, s, _ = shape
        row = [f"[{b}, {h}, {s}, 128]"]
        for name, (source, key) in COLUMNS.items():
            text, tflops = cell(sources[source].get(shape), key)
            row.append(text)
            if name in TARGETS:
                met[name].append((s, tflops))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for name, target in TARGETS.items():
        verdicts = ", ".join(
            f"{s} keys: {'—' if t is None else f'{t:.0f}'} ({'met' if t is not None and t >= target else 'not met'})"
            for s, t in met[name])
        lines.append(f"- {name} ≥ {target:.0f} TFLOP/s (issue 6): {verdicts}.")
    (args.out_dir / "attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
