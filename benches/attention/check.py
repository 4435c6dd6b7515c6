# Correctness + timing of fluxc's attention kernels on the GPU machine.
# usage: [SPLIT=0|1] [SPLIT_SMS=N] check.py KERNEL_DIR MODE   (MODE: full | small | time | diag)
# KERNEL_DIR holds attention_d64_bf16.cu / attention_d128_bf16.cu (compiled here
# with nvcc; or .cubin files) and meta.txt: "threads block_m smem64 smem128
# [abi]" (written by `cargo run --example render_attention -- DIR`); abi
# "tma" means the kernels take CUDA tensor maps of q, k, v (built here with
# cuTensorMapEncodeTiled) instead of the three pointers.
# Checks against an fp32 torch reference (relative L2 <= 1e-2 and max error
# <= 2x torch SDPA's own bf16 error), NaN-poisoned outputs, NaN padding after
# the output (no out-of-bounds writes), odd lengths, seq_kv = 0, scale <= 0;
# times FLUX's shapes next to torch SDPA's default, cuDNN and flash backends.
import sys, math, os, subprocess, time
import numpy as np, torch, cupy as cp
from common import median_ms, split_plan, split_sms

vdir, mode = sys.argv[1], sys.argv[2]
meta = open(os.path.join(vdir, "meta.txt")).read().split()
threads, block_m, smem64, smem128 = map(int, meta[:4])
# "tma" or "tma:ROWS": tensor maps, K/V boxes of ROWS keys (default 128).
TMA = len(meta) > 4 and meta[4].startswith("tma")
KV_ROWS = int(meta[4].split(":")[1]) if TMA and ":" in meta[4] else 128
SMEM = {64: smem64, 128: smem128}
mods = {}
split_fns = {}  # d -> (part kernel, merge kernel), when the source has them
for d in (64, 128):
    name = f"attention_d{d}_bf16"
    cubin = os.path.join(vdir, name + ".cubin")
    try:
        m = cp.RawModule(path=cubin)
        f = m.get_function(name)
    except Exception as e:
        print("no cubin, compiling with nvcc:", e, flush=True)
        cubin = f"/tmp/{os.path.basename(vdir)}_{name}.cubin"
        r = subprocess.run(["nvcc", "-cubin", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a",
                            "-Xptxas", "-v", "-o", cubin, os.path.join(vdir, name + ".cu")], capture_output=True, text=True)
        print(r.stdout, r.stderr, flush=True)
        m = cp.RawModule(path=cubin)
        f = m.get_function(name)
    f.max_dynamic_shared_size_bytes = SMEM[d]
    mods[d] = f
    try:
        fp, fm = m.get_function(name + "_part"), m.get_function(name + "_merge")
        fp.max_dynamic_shared_size_bytes = SMEM[d]
        split_fns[d] = (fp, fm)
    except Exception:
        pass

# As the runtime does by default (SPLIT=1), the last wave's query tiles run
# split over their keys (the kernel's _part and _merge entry points) when
# that fills the wave better; SPLIT=0 runs every tile whole; SPLIT_SMS=N
# plans for N SMs instead of the device's (to cover the split path with
# small shapes). `time` reports both.
SMS = split_sms(cp.cuda.Device().attributes["MultiProcessorCount"])  # None: SPLIT=0

def plan_of(d, b, h, sq, skv):
    # The runtime's split of this problem ((c, k), see common.py), or None
    # (also with SPLIT=0, and for kernels without split entry points).
    if not (TMA and d in split_fns):
        return None
    return split_plan(-(-sq // block_m), h, b, -(-skv // KV_ROWS), SMS)

def cpv(t):
    return cp.from_dlpack(t.view(torch.int16))

def padded(shape, gen, pad=4096):
    n = int(np.prod(shape))
    buf = torch.full((n + pad,), float("nan"), dtype=torch.bfloat16, device="cuda")
    if gen is not None:
        buf[:n] = gen(n)
    return buf, buf[:n].view(shape)

import ctypes
libcuda = ctypes.CDLL("libcuda.so.1")

def tensor_map(t, b, seq, h, d, rows=128):
    # [batch, seq, heads, d] bf16 as a 4-D tensor map, box [64, 1, rows, 1],
    # 128-byte swizzle, out-of-bounds zero (the ABI in attention_ws.cu).
    raw = ctypes.create_string_buffer(128 + 64)
    addr = (ctypes.addressof(raw) + 63) // 64 * 64
    u64 = ctypes.c_uint64
    dims = (u64 * 4)(d, h, max(seq, 1), b)
    strides = (u64 * 3)(2 * d, 2 * d * h, 2 * d * h * max(seq, 1))
    box = (ctypes.c_uint32 * 4)(64, 1, rows, 1)
    es = (ctypes.c_uint32 * 4)(1, 1, 1, 1)
    rc = libcuda.cuTensorMapEncodeTiled(ctypes.c_void_p(addr), 9, 4, ctypes.c_void_p(t.data_ptr()),
                                        dims, strides, box, es, 0, 3, 3, 0)
    assert rc == 0, f"cuTensorMapEncodeTiled failed: {rc}"
    return raw, addr

parts = {}  # f32 scratch of the split path, by size

def launch(d, b, h, sq, skv, scale, qb, kb, vb, ob, split=True):
    grid = ((sq + block_m - 1) // block_m, h, b)
    if TMA:
        maps = [tensor_map(qb, b, sq, h, d), tensor_map(kb, b, skv, h, d, KV_ROWS),
                tensor_map(vb, b, skv, h, d, KV_ROWS)]
        plan = plan_of(d, b, h, sq, skv) if split else None
        if plan is not None:
            c, k = plan
            grid = (grid[0] - c, h, b)
        keep = [ctypes.c_uint64(ob.data_ptr()), ctypes.c_int32(sq), ctypes.c_int32(skv),
                ctypes.c_int32(h), ctypes.c_float(scale)]
        params = (ctypes.c_void_p * 8)(*[m[1] for m in maps], *[ctypes.addressof(x) for x in keep])
        if grid[0] > 0:
            rc = libcuda.cuLaunchKernel(ctypes.c_void_p(getattr(mods[d], "kernel", mods[d]).ptr), grid[0], grid[1], grid[2], threads, 1, 1,
                                        SMEM[d], ctypes.c_void_p(0), params, None)
            assert rc == 0, f"cuLaunchKernel failed: {rc}"
        if plan is not None:
            fp, fm = split_fns[d]
            n = c * k * h * b * (128 * d + 256)
            if n not in parts:
                parts[n] = torch.empty(n, dtype=torch.float32, device="cuda")
            part = parts[n]
            keep = [ctypes.c_uint64(part.data_ptr()), ctypes.c_int32(sq), ctypes.c_int32(skv),
                    ctypes.c_int32(h), ctypes.c_float(scale), ctypes.c_int32(grid[0]), ctypes.c_int32(k)]
            params = (ctypes.c_void_p * 10)(*[m[1] for m in maps], *[ctypes.addressof(x) for x in keep])
            rc = libcuda.cuLaunchKernel(ctypes.c_void_p(getattr(fp, "kernel", fp).ptr), c * k, h, b, threads, 1, 1,
                                        SMEM[d], ctypes.c_void_p(0), params, None)
            assert rc == 0, f"cuLaunchKernel (part) failed: {rc}"
            fm((c * 32, h, b), (128, 1, 1), (cp.from_dlpack(part), cpv(ob), np.int32(sq), np.int32(h),
                                              np.int32(grid[0]), np.int32(k)))
        return
    args = (cpv(qb), cpv(kb), cpv(vb), cpv(ob), np.int32(sq), np.int32(skv), np.int32(h), np.float32(scale))
    mods[d](grid, (threads, 1, 1), args, shared_mem=SMEM[d])

def run(d, b, h, sq, skv, scale=None, check=True, time_it=False, split=True):
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    g = torch.Generator(device="cuda").manual_seed(1234 + sq * 7 + skv + d)
    rnd = lambda n: torch.randn(n, device="cuda", generator=g, dtype=torch.float32).to(torch.bfloat16)
    qb, q = padded((b, sq, h, d), rnd)
    kb, k = padded((b, skv, h, d), rnd)
    vb, v = padded((b, skv, h, d), rnd)
    ob, o = padded((b, sq, h, d), None)
    torch.cuda.synchronize()
    launch(d, b, h, sq, skv, scale, qb, kb, vb, ob, split=split)
    cp.cuda.Device().synchronize()
    ok = True
    if check:
        tail_ok = bool(torch.isnan(ob[o.numel():].float()).all())
        qf, kf, vf = (x.float().transpose(1, 2) for x in (q, k, v))
        if skv > 0:
            ref = torch.softmax(qf @ kf.transpose(-1, -2) * scale, dim=-1) @ vf
        else:
            ref = torch.zeros_like(qf)
        out = o.float().transpose(1, 2)
        nan = bool(torch.isnan(out).any())
        err = (out - ref).abs().max().item() if sq > 0 else 0.0
        rel = ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item() if skv > 0 else (out.abs().max().item() if sq > 0 else 0.0)
        terr = float("nan")
        if skv > 0 and sq > 0:
            tref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale).float()
            terr = (tref - ref).abs().max().item()
        rerr = (ref.to(torch.bfloat16).float() - ref).abs().max().item() if sq > 0 else 0.0
        if not math.isfinite(terr):
            terr = rerr
        ok = (not nan) and tail_ok and err <= max(2 * terr, 2 * rerr + 2e-3) and rel <= 1e-2
        how = "split" if split and plan_of(d, b, h, sq, skv) else "whole tiles"
        print(f"d={d} b={b} h={h} sq={sq} skv={skv} scale={scale:.4g} ({how}): relL2={rel:.2e} max|err|={err:.2e} "
              f"sdpa-bf16 max|err|={terr:.2e} nan={nan} tail_untouched={tail_ok} -> {'OK' if ok else 'FAIL'}", flush=True)
    if time_it:
        fl = 4.0 * b * h * sq * skv * d
        ms = median_ms(lambda: launch(d, b, h, sq, skv, scale, qb, kb, vb, ob))
        whole_ms = median_ms(lambda: launch(d, b, h, sq, skv, scale, qb, kb, vb, ob, split=False))
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        tms = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt))
        from torch.nn.attention import sdpa_kernel, SDPBackend
        def backend(which):
            try:
                with sdpa_kernel(which):
                    return median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt))
            except Exception:
                return float("nan")
        cms = backend(SDPBackend.CUDNN_ATTENTION)
        fms = backend(SDPBackend.FLASH_ATTENTION)
        print(f"  TIME d={d} [{b},{h},{sq},{skv}]: fluxc {ms*1e3:.1f} us = {fl/ms/1e9:.0f} TFLOP/s "
              f"(whole tiles {whole_ms*1e3:.1f} us = {fl/whole_ms/1e9:.0f}); "
              f"torch sdpa {tms*1e3:.1f} us = {fl/tms/1e9:.0f}; cudnn {cms*1e3:.1f} us = {fl/cms/1e9:.0f}; "
              f"flash {fms*1e3:.1f} us = {fl/fms/1e9:.0f}", flush=True)
        results.append({"head_dim": d, "shape": [b, h, sq, skv],
                        "us": {"fluxc_bf16": ms * 1e3, "fluxc_bf16_whole_tiles": whole_ms * 1e3,
                               "torch_sdpa_default": tms * 1e3, "cudnn": cms * 1e3,
                               "torch_flash": fms * 1e3},
                        "tflops": {k: fl / (v * 1e-3) / 1e12 if v == v else None
                                   for k, v in {"fluxc_bf16": ms, "fluxc_bf16_whole_tiles": whole_ms,
                                                "torch_sdpa_default": tms, "cudnn": cms,
                                                "torch_flash": fms}.items()}})
    return ok

small = [(1,1,19,37),(2,3,37,19),(1,2,1,1),(1,1,128,64),(1,1,64,0),(1,4,130,200),(2,2,255,65),
         (1,2,129,63),(1,2,300,300),(1,1,128,256),(1,3,4080,512),(1,2,512,4080+512)]
big = [(2,5,1000,1000),(1,3,4592,4592),(1,24,4352,4352)]
def diag(d):
    # Q = 0 -> uniform softmax -> O = mean of V rows (exercises only P.V);
    # V = 1 -> O = 1 (normalisation); K = 0 likewise uniform.
    b, h, sq, skv = 1, 2, 128, 256
    g = torch.Generator(device="cuda").manual_seed(7)
    rnd = lambda n: torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)
    for what in ("q0", "v1", "k0", "rand"):
        qb, q = padded((b, sq, h, d), rnd); kb, k = padded((b, skv, h, d), rnd); vb, v = padded((b, skv, h, d), rnd)
        ob, o = padded((b, sq, h, d), None)
        if what == "q0": q.zero_()
        if what == "v1": v.fill_(1.0)
        if what == "k0": k.zero_()
        launch(d, b, h, sq, skv, 0.125, qb, kb, vb, ob); torch.cuda.synchronize()
        qf, kf, vf = (x.float().transpose(1, 2) for x in (q, k, v))
        ref = torch.softmax(qf @ kf.transpose(-1, -2) * 0.125, dim=-1) @ vf
        out = o.float().transpose(1, 2)
        rel = ((out - ref).norm() / ref.norm()).item()
        print(f"DIAG d={d} {what}: relL2={rel:.3e} nan={bool(torch.isnan(out).any())} out[0,0,0,:4]={out[0,0,0,:4].tolist()} ref={ref[0,0,0,:4].tolist()}", flush=True)

results = []
allok = True
if mode == "diag":
    diag(64); diag(128); sys.exit(0)
if mode in ("full", "small"):
    cases = small + (big if mode == "full" else [])
    for d in (64, 128):
        for c in cases:
            allok &= run(d, *c)
            if plan_of(d, *c):
                allok &= run(d, *c, split=False)
        allok &= run(d, 1, 2, 77, 91, scale=-0.3)
        allok &= run(d, 1, 2, 77, 600, scale=-0.3)  # split over 4 key tiles
        allok &= run(d, 1, 2, 77, 300, scale=0.0)
        if not allok and mode == "small":
            break
if mode in ("full", "small", "time") and allok:
    run(128, 1, 24, 4352, 4352, check=False, time_it=True)
    run(128, 1, 24, 4608, 4608, check=False, time_it=True)
    if mode == "full":
        run(64, 1, 24, 4608, 4608, check=False, time_it=True)
print(f"[{vdir}] " + ("ALL OK" if allok else "SOME FAILED"), flush=True)
if os.environ.get("RESULTS_JSON"):
    import json
    json.dump({"all_ok": allok, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "timings": results}, open(os.environ["RESULTS_JSON"], "w"), indent=2)
