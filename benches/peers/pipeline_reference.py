#!/usr/bin/env python3
"""The whole FluxPipeline as the reference of `fluxc generate`, on the GPU
machine: random weights (the transformer as benches/peers/make_reference.py
builds it, the VAE as benches/peers/vae_reference.py does), random text
embeddings and initial latents, then diffusers 0.42.1's FluxPipeline from
those embeddings and latents (no text encoders: the pipeline time excludes
text encoding, as fluxc's does).

    python3 benches/peers/pipeline_reference.py --out /tmp/fluxc-pipe [--variant schnell]

Writes under --out:
    pipe/transformer/, pipe/vae/   save_pretrained checkpoints (`fluxc generate --weights pipe`)
    embeds.safetensors             prompt_embeds [1, T, 4096], pooled_prompt_embeds [1, 768] (f32)
    latents.safetensors            `latents`: the initial packed latents [1, (H/16)(W/16), 64] (f32)
    reference.safetensors          final packed latents of the fp32 and bf16 pipelines
                                   (`latents_fp32`, `latents_bf16`) and the fp32 image
                                   (`image_fp32`, [1, 3, H, W] in [0, 1])
    reference.json                 bf16 eager: seconds per image (embeddings to decoded
                                   image, median of --repeats) and the bf16 final latents'
                                   relative L2 error vs fp32
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "fixtures"))
from make_reference import build_model  # noqa: E402
from make_vae_fixtures import diffusers_config, randomize  # noqa: E402

# FLUX.1's scheduler_config.json (schnell: no shift; dev: dynamic shift).
SCHEDULER = {
    "schnell": dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_image_seq_len=256,
                    max_image_seq_len=4096, base_shift=0.5, max_shift=1.15),
    "dev": dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--variant", choices=["schnell", "dev"], default="schnell")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--steps", type=int, default=None, help="default: 4 (schnell), 28 (dev)")
    p.add_argument("--guidance", type=float, default=3.5, help="dev only")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    steps = a.steps or (4 if a.variant == "schnell" else 28)
    guidance = a.guidance if a.variant == "dev" else 0.0
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(5)

    t0 = time.time()
    transformer = build_model(a.variant)
    transformer.save_pretrained(a.out / "pipe" / "transformer", max_shard_size="5GB")
    kwargs, _ = diffusers_config("flux-vae")
    vae = AutoencoderKL(**kwargs).to(torch.float32).eval()
    randomize(vae, gen)
    vae.save_pretrained(a.out / "pipe" / "vae")
    print(f"checkpoints written in {time.time() - t0:.1f}s", flush=True)

    rows, cols = a.height // 16, a.width // 16
    embeds = {
        "prompt_embeds": torch.randn(1, a.text_tokens, 4096, generator=gen),
        "pooled_prompt_embeds": torch.randn(1, 768, generator=gen),
    }
    latents = torch.randn(1, rows * cols, 64, generator=gen)
    save_file({k: v.contiguous() for k, v in embeds.items()}, str(a.out / "embeds.safetensors"))
    save_file({"latents": latents.contiguous()}, str(a.out / "latents.safetensors"))

    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER[a.variant]), vae=vae.to("cuda"),
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                        transformer=transformer)

    def run(dtype, output_type):
        pipe.transformer.to(dtype)
        pipe.vae.to(dtype)
        with torch.no_grad():
            return pipe(prompt_embeds=embeds["prompt_embeds"].to("cuda", dtype),
                        pooled_prompt_embeds=embeds["pooled_prompt_embeds"].to("cuda", dtype),
                        latents=latents.to("cuda", dtype), num_inference_steps=steps, guidance_scale=guidance,
                        height=a.height, width=a.width, output_type=output_type, return_dict=False)[0]

    bf16_latents = run(torch.bfloat16, "latent").float()
    times = []
    for _ in range(a.repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        run(torch.bfloat16, "pt")
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    fp32_latents = run(torch.float32, "latent").float()
    fp32_image = run(torch.float32, "pt").float()
    save_file({"latents_fp32": fp32_latents.cpu().contiguous(), "latents_bf16": bf16_latents.cpu().contiguous(),
               "image_fp32": fp32_image.cpu().contiguous()}, str(a.out / "reference.safetensors"))
    err = ((bf16_latents - fp32_latents).norm() / fp32_latents.norm()).item()
    result = {"variant": a.variant, "steps": steps, "height": a.height, "width": a.width,
              "text_tokens": a.text_tokens, "diffusers_bf16_s": statistics.median(times),
              "diffusers_bf16_latents_rel_l2": err}
    (a.out / "reference.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
