#!/usr/bin/env python3
"""Random-weight FLUX.1 transformer checkpoint, inputs and reference outputs.

Writes, under --out:
    checkpoint/            diffusers' save_pretrained (bf16, the real sharded format)
    io.safetensors         the forward's inputs (f32)
    ref_fp32.safetensors   `sample` of the same weights run in fp32 (TF32 off)
    diffusers_bf16.safetensors  `sample` of diffusers' eager bf16 forward
    diffusers.json         diffusers' eager bf16 time per forward (median/min/max ms),
                           and with --torchao the eager torchao fp8 times
    torchao_fp8_{tensor,row}.safetensors  with --torchao: `sample` of the bf16
                           model after torchao's float8_dynamic_activation_float8_weight
                           (per tensor / per row) on the linears fluxc's default fp8
                           policy selects (transformer-block linears except the
                           adaLN modulation ones)

Weights come from diffusers' own initialisation (seeded), so the model is
the real architecture with untrained weights. Needs torch, a GPU and
diffusers==0.42.1.

    python3 benches/peers/make_reference.py --variant schnell --out /tmp/flux
"""

import argparse
import copy
import json
import pathlib
import statistics
import time

import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file


def config(variant):
    return dict(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=variant == "dev",
        axes_dims_rope=(16, 56, 56),
    )


def build_model(variant):
    """FLUX.1-`variant`'s transformer with diffusers' default (random)
    initialisation, built on the GPU, in bf16."""
    with torch.device("cuda"):
        model = FluxTransformer2DModel(**config(variant))
    return model.to(torch.bfloat16).eval()


def inputs(variant, height, width, text_tokens, gen):
    rows, cols = height // 16, width // 16
    img_ids = torch.zeros(rows, cols, 3)
    img_ids[..., 1] += torch.arange(rows)[:, None]
    img_ids[..., 2] += torch.arange(cols)[None, :]
    x = {
        "hidden_states": torch.randn(1, rows * cols, 64, generator=gen),
        "encoder_hidden_states": torch.randn(1, text_tokens, 4096, generator=gen),
        "pooled_projections": torch.randn(1, 768, generator=gen),
        "timestep": torch.tensor([0.75]),
        "img_ids": img_ids.reshape(rows * cols, 3),
        "txt_ids": torch.zeros(text_tokens, 3),
    }
    if variant == "dev":
        x["guidance"] = torch.tensor([3.5])
    return x


def forward(model, x, dtype):
    args = {k: v.to("cuda", dtype if k not in ("img_ids", "txt_ids") else torch.float32) for k, v in x.items()}
    with torch.no_grad():
        return model(**args, return_dict=False)[0]


def time_forward(model, x, dtype, warmup, repeats):
    for _ in range(warmup):
        forward(model, x, dtype)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        forward(model, x, dtype)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": repeats}


# fluxc's default fp8 policy (passes/src/options.rs, Fp8Policy::default):
# every linear inside a double or single block except the modulation GEMVs.
FP8_INCLUDE = ("transformer_blocks.", "single_transformer_blocks.")
FP8_EXCLUDE = (".norm1.linear", ".norm1_context.linear", ".norm.linear")


def fp8_policy(module, fqn):
    return (isinstance(module, torch.nn.Linear) and fqn.startswith(FP8_INCLUDE)
            and not fqn.endswith(FP8_EXCLUDE))


def torchao_fp8(model, x, repeats, out):
    """torchao's dynamic fp8 (per tensor, per row) of the bf16 `model` on the
    fp8 policy's linears: eager time per forward and `sample`, each on a copy."""
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor,
                                      quantize_)
    timings = {}
    for name, granularity in (("tensor", PerTensor), ("row", PerRow)):
        quantized = copy.deepcopy(model)
        quantize_(quantized, Float8DynamicActivationFloat8WeightConfig(granularity=granularity()),
                  filter_fn=fp8_policy)
        timings[f"torchao_fp8_{name}"] = time_forward(quantized, x, torch.bfloat16, warmup=3, repeats=repeats)
        sample = forward(quantized, x, torch.bfloat16)
        save_file({"sample": sample.float().cpu().contiguous()}, out / f"torchao_fp8_{name}.safetensors")
        print(f"torchao fp8 per {name} (eager): {timings[f'torchao_fp8_{name}']}", flush=True)
        del quantized
        torch.cuda.empty_cache()
    return timings


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", choices=["schnell", "dev"], default="schnell")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--text-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--torchao", action="store_true", help="also run torchao's fp8 (per tensor, per row)")
    p.add_argument("--out", type=pathlib.Path, required=True)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)

    t0 = time.time()
    model = build_model(a.variant)
    print(f"model built in {time.time() - t0:.1f}s", flush=True)
    t0 = time.time()
    model.save_pretrained(a.out / "checkpoint", max_shard_size="5GB")
    print(f"checkpoint saved in {time.time() - t0:.1f}s", flush=True)

    x = inputs(a.variant, a.height, a.width, a.text_tokens, gen)
    save_file({k: v.contiguous() for k, v in x.items()}, a.out / "io.safetensors")

    timing = time_forward(model, x, torch.bfloat16, warmup=3, repeats=a.repeats)
    sample = forward(model, x, torch.bfloat16)
    save_file({"sample": sample.float().cpu().contiguous()}, a.out / "diffusers_bf16.safetensors")
    print(f"diffusers eager bf16: {timing}", flush=True)
    timings = {"eager_bf16": timing}
    if a.torchao:
        timings.update(torchao_fp8(model, x, a.repeats, a.out))

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = model.float()
    reference = forward(model, x, torch.float32)
    save_file({"sample": reference.cpu().contiguous()}, a.out / "ref_fp32.safetensors")
    versions = {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(), "driver": driver_version()}
    try:
        versions["torchao"] = __import__("torchao").__version__
    except ImportError:
        pass
    (a.out / "diffusers.json").write_text(json.dumps({**timings, "versions": versions}, indent=2))
    print("reference written", flush=True)


def driver_version():
    """The NVIDIA driver's version, as nvidia-smi reports it (None without it)."""
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


if __name__ == "__main__":
    main()
