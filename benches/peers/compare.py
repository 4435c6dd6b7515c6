#!/usr/bin/env python3
"""Compares fluxc's and the peers' transformer outputs with the fp32
reference and writes the forward report (JSON + markdown).

    python3 benches/peers/compare.py --dir /tmp/flux \
        --fluxc bf16 fluxc_bf16.json fluxc_bf16.safetensors \
        --fluxc fp8-row fluxc_row.json fluxc_row.safetensors \
        --commit abc123 --command "..." --out report

Each `--fluxc LABEL JSON OUTPUT` is one fluxc artifact's `fluxc run --json`
report and output file. LABEL is `bf16`, `fp8-tensor` or `fp8-row`; each
is judged against its peer of the same precision from make_reference.py:
diffusers eager bf16 for bf16 (error ratio ≤ 1.5), torchao's fp8 of the same
granularity for fp8 (≤ 1.2), when that peer ran. Rows for the torch.compile
peers (torch_compile.py) and the library floors (floors.py) are added when
their outputs are in --dir, and each fluxc variant is compared with the
torch.compile peer of its precision.
"""

import argparse
import datetime
import json
import pathlib

from safetensors.torch import load_file

# peer -> (output file, timing key in diffusers.json, name, acceptance ratio of
# a fluxc variant's error to this peer's)
PEERS = {
    "diffusers_bf16": ("diffusers_bf16.safetensors", "eager_bf16", "diffusers 0.42.1 eager bf16", 1.5),
    "torchao_fp8_tensor": ("torchao_fp8_tensor.safetensors", "torchao_fp8_tensor",
                           "torchao 0.18 fp8 per tensor (eager)", 1.2),
    "torchao_fp8_row": ("torchao_fp8_row.safetensors", "torchao_fp8_row", "torchao 0.18 fp8 per row (eager)", 1.2),
}

# precision -> the peer a fluxc variant's error is judged against, and the
# torch.compile peer of that precision
QUALITY_PEER = {"bf16": "diffusers_bf16", "fp8-tensor": "torchao_fp8_tensor", "fp8-row": "torchao_fp8_row"}
COMPILED = {"bf16": "torch_compile_bf16", "fp8-tensor": "torch_compile_fp8_tensor", "fp8-row": "torch_compile_fp8_row"}


def precision(label):
    """The precision a variant label names: its leading `bf16`, `fp8-tensor`
    or `fp8-row` (prepare.sh's variants add `-fast`, `-image`, `-tuned`)."""
    return next((p for p in QUALITY_PEER if label == p or label.startswith(p + "-")), label)


def rel_l2(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=pathlib.Path, required=True)
    p.add_argument("--fluxc", nargs=3, action="append", metavar=("LABEL", "JSON", "OUTPUT"), required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--command", default="")
    p.add_argument("--name", default="forward")
    p.add_argument("--out", type=pathlib.Path, required=True)
    a = p.parse_args()

    ref = load_file(a.dir / "ref_fp32.safetensors")["sample"]
    timings = json.loads((a.dir / "diffusers.json").read_text())
    rows, peer_errors = [], {}
    for peer_key, (file, key, name, _) in PEERS.items():
        if (a.dir / file).exists() and key in timings:
            t = timings[key]
            peer_errors[peer_key] = rel_l2(load_file(a.dir / file)["sample"], ref)
            rows.append({"system": name, "median_ms": t["median_ms"], "min_ms": t["min_ms"], "max_ms": t["max_ms"],
                         "rel_l2_vs_fp32": peer_errors[peer_key], "host_us_per_launch": None})
    for key in COMPILED.values():
        if (a.dir / f"{key}.safetensors").exists() and key in timings:
            t = timings[key]
            peer_errors[key] = rel_l2(load_file(a.dir / f"{key}.safetensors")["sample"], ref)
            rows.append({"system": f"torch.compile {key[len('torch_compile_'):].replace('_', ' ')} ({t['recipe']})",
                         "median_ms": t["median_ms"], "min_ms": t["min_ms"], "max_ms": t["max_ms"],
                         "rel_l2_vs_fp32": peer_errors[key], "host_us_per_launch": None,
                         "compile_s": t["compile_s"], "cold_compile_s": t.get("cold_compile_s")})
    floors = None
    if (a.dir / "floors.json").exists():
        floors = json.loads((a.dir / "floors.json").read_text())
        for name, key in (("bf16", "floor_bf16_ms"), ("fp8 row", "floor_fp8_row_ms")):
            rows.append({"system": f"library floor {name}: cuBLAS GEMMs + cuDNN attention, each alone, summed",
                         "median_ms": floors[key], "min_ms": None, "max_ms": None, "rel_l2_vs_fp32": None,
                         "host_us_per_launch": None})
    checks, fluxc_runs = [], {}
    eager = timings["eager_bf16"]["median_ms"]
    for label, json_path, output in a.fluxc:
        run = json.loads(pathlib.Path(json_path).read_text())
        fluxc_runs[label] = run
        error = rel_l2(load_file(output)["sample"], ref)
        median = run["gpu_ms"]["median"]
        rows.append({"system": f"fluxc {label} (CUDA graph)", "median_ms": median, "min_ms": run["gpu_ms"]["min"],
                     "max_ms": run["gpu_ms"]["max"], "rel_l2_vs_fp32": error,
                     "host_us_per_launch": run["launch_us"]["median"]})
        check = {"fluxc": label, "median_ms": median, "speedup_vs_diffusers_eager": eager / median,
                 "rel_l2_vs_fp32": error}
        base = precision(label)
        compiled = COMPILED.get(base)
        if compiled in timings and (a.dir / f"{compiled}.safetensors").exists():
            check.update(speedup_vs_torch_compile=timings[compiled]["median_ms"] / median)
        peer_key = QUALITY_PEER.get(base)
        if peer_key in peer_errors:
            _, _, peer, bound = PEERS[peer_key]
            ratio = error / peer_errors[peer_key]
            check.update(peer=peer, peer_rel_l2=peer_errors[peer_key], error_ratio=ratio, bound=bound,
                         within_bound=ratio <= bound)
        checks.append(check)

    report = {
        "date": datetime.date.today().isoformat(),
        "commit": a.commit,
        "command": a.command,
        "gpu": timings["versions"]["gpu"],
        "versions": timings["versions"],
        "rows": rows,
        "checks": checks,
        "floors": floors,
        "fluxc": fluxc_runs,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# {a.name}: FLUX.1 transformer forward on {report['gpu']}",
        "",
        f"Date {report['date']}, commit `{a.commit}`.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "gpu" and v is not None)
        + ".",
        "",
        f"Command: `{a.command}`",
        "",
        "| system | median ms | min ms | max ms | rel. L2 vs fp32 | host µs / launch | compile s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(v, fmt):
        return "—" if v is None else format(v, fmt)

    def compile_cell(r):
        # A compile from a warm Inductor cache shows the cold compile time
        # an earlier run recorded in that cache next to its own.
        if r.get("cold_compile_s") is not None:
            return f"{r['compile_s']:.0f} (cold: {r['cold_compile_s']:.0f})"
        return cell(r.get("compile_s"), ".0f")

    for r in rows:
        lines.append(f"| {r['system']} | {r['median_ms']:.2f} | {cell(r['min_ms'], '.2f')} | {cell(r['max_ms'], '.2f')} "
                     f"| {cell(r['rel_l2_vs_fp32'], '.3e')} | {cell(r['host_us_per_launch'], '.1f')} "
                     f"| {compile_cell(r)} |")
    lines.append("")
    for c in checks:
        line = f"- fluxc {c['fluxc']}: {c['speedup_vs_diffusers_eager']:.2f}× diffusers eager bf16"
        if "speedup_vs_torch_compile" in c:
            line += f", {c['speedup_vs_torch_compile']:.2f}× torch.compile of the same precision"
        if "peer" in c:
            verdict = "within" if c["within_bound"] else "NOT within"
            line += (f"; error / {c['peer']}'s = {c['error_ratio']:.3f} ({verdict} the bound "
                     f"{c['bound']})")
        lines.append(line + ".")
    lines.append("")
    (a.out / f"{a.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
