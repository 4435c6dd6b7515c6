# Experiment (GPU machine): does the split part of attention's last wave
# gain from running on a second stream, beside the whole-tile kernel,
# instead of after it as the runtime launches it?
#
#   python3 benches/attention/split_overlap.py KERNEL_DIR
#
# KERNEL_DIR as for check.py (`cargo run --release --example
# render_attention -- DIR`). For the bf16 kernel at [1, 24, S, 128], S =
# 4352 and 4608, times (median of 5 batches of 20 calls, µs):
#   whole     every query tile whole
#   serial    the whole waves, then _part and _merge, on one stream (the
#             runtime's split)
#   overlap   _part and _merge on a second stream forked before the
#             whole-tile kernel and joined after it (`overlap-hi`: the
#             whole-tile kernel's stream at a higher priority, so its CTAs
#             are dispatched first)
# for the runtime's split (c, k) and for forced ones, including at 4608,
# where the runtime splits nothing (132 SMs hold no two segments of each of
# its 72 last-wave tiles, so a serial split cannot gain there). Each
# output is checked against the whole-tile one.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.argv = [sys.argv[0], sys.argv[1], "none"]  # check.py: load the kernels, check nothing
import check as C  # noqa: E402

import ctypes  # noqa: E402
import torch  # noqa: E402
import cupy as cp  # noqa: E402

D, B, H = 128, 1, 24
main_fn = C.mods[D]
part_fn, merge_fn = C.split_fns[D]
streams = {"s0": cp.cuda.Stream(non_blocking=True), "s1": cp.cuda.Stream(non_blocking=True)}
try:
    _, highest = cp.cuda.runtime.deviceGetStreamPriorityRange()
    streams["s0_hi"] = cp.cuda.Stream(non_blocking=True, priority=highest)
except Exception as e:  # CuPy 14.2 (on the GPU machine) has no stream priorities
    print(f"no stream priorities ({e}): overlap-hi left out", flush=True)


def launch(fn, x, stream, out_ptr, maps, seq, extra=()):
    keep = [ctypes.c_uint64(out_ptr), ctypes.c_int32(seq), ctypes.c_int32(seq), ctypes.c_int32(H),
            ctypes.c_float(D ** -0.5), *map(ctypes.c_int32, extra)]
    params = (ctypes.c_void_p * (3 + len(keep)))(*[m[1] for m in maps], *[ctypes.addressof(v) for v in keep])
    rc = C.libcuda.cuLaunchKernel(ctypes.c_void_p(fn.kernel.ptr), x, H, B, C.threads, 1, 1, C.SMEM[D],
                                  ctypes.c_void_p(stream.ptr), params, None)
    assert rc == 0, f"cuLaunchKernel failed: {rc}"


def problem(seq):
    g = torch.Generator(device="cuda").manual_seed(seq)
    q, k, v = (torch.randn(B, seq, H, D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    maps = [C.tensor_map(q, B, seq, H, D), C.tensor_map(k, B, seq, H, D, C.KV_ROWS),
            C.tensor_map(v, B, seq, H, D, C.KV_ROWS)]
    return (q, k, v), maps


def runner(seq, maps, out, how, c=0, k=0):
    q_tiles = -(-seq // 128)
    base = q_tiles - c
    part = torch.empty(max(c * k * H * B * 128 * (D + 2), 1), dtype=torch.float32, device="cuda")
    fork, join = cp.cuda.Event(disable_timing=True), cp.cuda.Event(disable_timing=True)

    def merge(stream):
        with stream:
            merge_fn((c * 32, H, B), (128, 1, 1), (cp.from_dlpack(part), cp.from_dlpack(out.view(torch.int16)),
                                                   cp.int32(seq), cp.int32(H), cp.int32(base), cp.int32(k)))

    def run():
        s0 = streams["s0_hi" if how == "overlap-hi" else "s0"]
        if how == "whole":
            launch(main_fn, q_tiles, s0, out.data_ptr(), maps, seq)
        elif how == "serial":
            launch(main_fn, base, s0, out.data_ptr(), maps, seq)
            launch(part_fn, c * k, s0, part.data_ptr(), maps, seq, (base, k))
            merge(s0)
        else:
            s1 = streams["s1"]
            fork.record(s0)
            s1.wait_event(fork)
            launch(main_fn, base, s0, out.data_ptr(), maps, seq)
            launch(part_fn, c * k, s1, part.data_ptr(), maps, seq, (base, k))
            merge(s1)
            join.record(s1)
            s0.wait_event(join)
        return s0

    return run


def time_us(run, n=20, reps=5):
    for _ in range(5):
        s = run()
    s.synchronize()
    times = []
    for _ in range(reps):
        st, en = cp.cuda.Event(), cp.cuda.Event()
        st.record(s)
        for _ in range(n):
            s = run()
        en.record(s)
        en.synchronize()
        times.append(cp.cuda.get_elapsed_time(st, en) * 1e3 / n)
    return sorted(times)[reps // 2]


cases = {4352: [(1, 5), (1, 8), (2, 5)], 4608: [(3, 2), (3, 3), (3, 5)]}
for seq, splits in cases.items():
    _, maps = problem(seq)
    ref = torch.empty(B, seq, H, D, dtype=torch.bfloat16, device="cuda")
    runner(seq, maps, ref, "whole")().synchronize()
    flops = 4.0 * B * H * seq * seq * D
    kinds = ("serial", "overlap", "overlap-hi") if "s0_hi" in streams else ("serial", "overlap")
    rows = [("whole", 0, 0)] + [(how, c, k) for c, k in splits for how in kinds]
    for how, c, k in rows:
        out = torch.full_like(ref, float("nan"))
        run = runner(seq, maps, out, how, c, k)
        run().synchronize()
        diff = (out.float() - ref.float()).abs().max().item()
        us = time_us(run)
        print(f"S={seq} {how:10s} c={c} k={k}: {us:7.1f} us = {flops / us / 1e6:5.0f} TFLOP/s, "
              f"max |out - whole| = {diff:.2e}", flush=True)
