#!/usr/bin/env python3
"""The torch.compile peers of the forward benchmark: the flux-fast recipe on
the checkpoint and inputs make_reference.py wrote.

    python3 benches/peers/torch_compile.py --dir /tmp/flux [--fp8 tensor|row]

Recipe (PyTorch's flux-fast, on the transformer alone): fused q/k/v
projections (`fuse_qkv_projections`), Inductor flags `conv_1x1_as_mm`,
`epilogue_fusion=False`, `coordinate_descent_tuning`,
`coordinate_descent_check_all_directions`, `torch.compile(fullgraph=True)`
in max-autotune mode; with --fp8, torchao's dynamic fp8 quantization of the
linears fluxc's default fp8 policy selects (make_reference.fp8_policy).
By default only the repeated blocks are compiled (diffusers'
`compile_repeated_blocks`, "regional" compilation), which keeps the compile
time within what a benchmark run can afford; --whole compiles the model.
run_h200.sh compiles the fp8 peers with --mode default (its
TORCH_COMPILE_FP8_MODE says why); the mode is recorded with the timing.

Writes, under --dir:
    torch_compile_{label}.safetensors   `sample` of the compiled forward
    diffusers.json                      gains `torch_compile_{label}`: time per
                                        forward (median/min/max ms) and compile_s
                                        (or --timings-out gets it alone)
where label is bf16, fp8_tensor or fp8_row.

Compile time and Inductor's cache: a cold compile of these peers takes
minutes (bf16 max-autotune ~300 s, fp8 ~270 s on the H200), more than one
10-minute device call holds for both. run_h200.sh can therefore carry
Inductor's cache (TORCHINDUCTOR_CACHE_DIR) from one call to the next. This
script says which it was: after a cold compile it records its compile time
in the cache (`fluxc_cold_compile.json`), and a compile that starts from a
cache holding this peer's graph reports itself as warm, with the cold
compile time recorded there next to its own.
"""

import argparse
import getpass
import json
import os
import pathlib
import time

import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import load_file, save_file

from make_reference import forward, fp8_policy, time_forward


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=pathlib.Path, required=True)
    p.add_argument("--fp8", choices=["off", "tensor", "row"], default="off")
    p.add_argument("--mode", default="max-autotune-no-cudagraphs")
    p.add_argument("--whole", action="store_true", help="compile the whole model, not only the repeated blocks")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--timings-out", type=pathlib.Path,
                   help="write this peer's timing to this JSON file instead of adding it to "
                        "diffusers.json (for several peers running at once)")
    a = p.parse_args()
    label = "bf16" if a.fp8 == "off" else f"fp8_{a.fp8}"

    model = FluxTransformer2DModel.from_pretrained(a.dir / "checkpoint", torch_dtype=torch.bfloat16)
    model = model.to("cuda").eval()
    model.fuse_qkv_projections()
    if a.fp8 != "off":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_
        granularity = PerTensor() if a.fp8 == "tensor" else PerRow()
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=granularity), filter_fn=fp8_policy)

    inductor = torch._inductor.config
    inductor.conv_1x1_as_mm = True
    inductor.epilogue_fusion = False
    inductor.coordinate_descent_tuning = True
    inductor.coordinate_descent_check_all_directions = True
    if a.whole:
        model = torch.compile(model, mode=a.mode, fullgraph=True)
    else:
        model.compile_repeated_blocks(mode=a.mode, fullgraph=True)

    # Inductor's cache directory, and what an earlier cold compile of this
    # peer recorded there (if this cache came from such a run).
    cache = pathlib.Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR")
                         or f"/tmp/torchinductor_{getpass.getuser()}")
    cold_record = cache / "fluxc_cold_compile.json"
    cold = json.loads(cold_record.read_text()) if cold_record.exists() else {}
    recipe_key = f"{label} {a.mode} {'whole' if a.whole else 'regional'}"

    x = load_file(a.dir / "io.safetensors")
    t0 = time.time()
    forward(model, x, torch.bfloat16)
    torch.cuda.synchronize()
    compile_s = time.time() - t0
    print(f"torch.compile {label}: first forward (compile) {compile_s:.1f} s", flush=True)
    timing = time_forward(model, x, torch.bfloat16, warmup=3, repeats=a.repeats)
    timing["compile_s"] = compile_s
    timing["recipe"] = f"mode={a.mode}, {'whole model' if a.whole else 'regional (repeated blocks)'}"
    if recipe_key in cold:
        timing["inductor_cache"] = "warm"
        timing["cold_compile_s"] = cold[recipe_key]
        timing["recipe"] += ", warm Inductor cache"
    else:
        timing["inductor_cache"] = "cold"
        cache.mkdir(parents=True, exist_ok=True)
        cold[recipe_key] = compile_s
        cold_record.write_text(json.dumps(cold, indent=2))
    sample = forward(model, x, torch.bfloat16)
    save_file({"sample": sample.float().cpu().contiguous()}, a.dir / f"torch_compile_{label}.safetensors")
    if a.timings_out:
        a.timings_out.write_text(json.dumps({f"torch_compile_{label}": timing}, indent=2))
    else:
        timings_path = a.dir / "diffusers.json"
        timings = json.loads(timings_path.read_text())
        timings[f"torch_compile_{label}"] = timing
        timings_path.write_text(json.dumps(timings, indent=2))
    print(f"torch.compile {label}: {timing}", flush=True)


if __name__ == "__main__":
    main()
