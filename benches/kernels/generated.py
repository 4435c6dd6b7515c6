# Times generated kernels of a fluxc artifact one by one, outside the
# runtime, on the GPU machine: each kernel's first launch in schedule.json
# (per grid) is replayed with that launch's grid, block and buffers (random bf16 data,
# positive scales) and timed with CUDA events. Optional variant sources
# (edited copies of kernels.cu) are timed the same way, kernel for kernel,
# so a change to the emitter can be tried by hand before it is built.
#
# usage: generated.py ARTIFACT_DIR PATTERN[,PATTERN...] [VARIANT.cu ...]
# PATTERN: a prefix of kernel names (k31, k27_, ...). Compiled with nvcc
# for sm_90a (the runtime uses NVRTC with the same options otherwise).
# A variant kernel that needs dynamic shared memory says how much in a
# comment line `// fx-shared-bytes N` in its body. Each variant's buffers
# after one launch (from the same random contents) are compared byte for
# byte with the artifact kernel's: "same" or "DIFFERS".
import json, os, re, subprocess, sys
import cupy as cp

art, patterns, variants = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
sched = json.load(open(os.path.join(art, "schedule.json")))
buffers = {b["id"]: b for b in sched["buffers"]}

def module(path):
    cubin = "/tmp/" + os.path.basename(path) + ".cubin"
    r = subprocess.run(["nvcc", "-cubin", "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a",
                        "-Xptxas", "-v", "-o", cubin, path], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr[-4000:])
    regs = dict(re.findall(r"Function properties for (\w+)[\s\S]*?Used (\d+) registers", r.stderr))
    return cp.RawModule(path=cubin), regs

# One launch per kernel and grid (a kernel run at several sizes, such as
# the one-row linear, is timed at each).
launches = {}
for step in sched["steps"]:
    key = (step.get("kernel"), tuple(step.get("grid", ())))
    if step["step"] == "launch" and key not in launches:
        if any(step["kernel"].startswith(p) for p in patterns):
            launches[key] = step

rng = cp.random.default_rng(0)
allocs = {}
def buffer(bid):
    if bid not in allocs:
        b = buffers[bid]
        n = max(b["bytes"], 16)
        if b["dtype"] == "bf16":
            a = (rng.standard_normal(n // 2, dtype=cp.float32)).astype(cp.float32)
            a = (a.view(cp.uint32) >> 16).astype(cp.uint16)  # bf16 bits of N(0,1)
        elif b["dtype"] == "f32":
            a = cp.abs(rng.standard_normal(n // 4, dtype=cp.float32)) + 0.5
        else:
            a = cp.zeros(n, dtype=cp.uint8)
        allocs[bid] = a
    return allocs[bid]

def args(step):
    out = []
    for a in step["args"]:
        if a["kind"] == "ptr":
            out.append(buffer(a["value"]["buffer"]))
        elif a["kind"] == "i32":
            out.append(cp.int32(a["value"]))
        elif a["kind"] == "f32":
            out.append(cp.float32(a["value"]))
        else:
            sys.exit(f"argument kind {a['kind']} not handled")
    return out

def shared_bytes(src, name, step):
    # The variant's own request (see the usage), else the launch's.
    text = open(src).read()
    at = text.find(f" {name}(")
    m = re.search(r"// fx-shared-bytes (\d+)", text[at:text.find("\n}\n", at)]) if at >= 0 else None
    return int(m.group(1)) if m else step.get("shared_bytes", 0)

def outputs(fn, step, smem):
    # Every buffer of the launch after one launch from fresh contents.
    for a in step["args"]:
        if a["kind"] == "ptr":
            bid = a["value"]["buffer"]
            allocs[bid][...] = initial[bid]
    fn(tuple(step["grid"]), tuple(step["block"]), args(step), shared_mem=smem)
    return [allocs[a["value"]["buffer"]].copy() for a in step["args"] if a["kind"] == "ptr"]

# FLUSH_L2=1: each launch timed alone after writing 256 MB elsewhere, so
# its operands come from DRAM as in a forward (where the kernels between
# two launches of it move far more than the 50 MB L2), not from the L2 the
# previous launch filled.
FLUSH = os.environ.get("FLUSH_L2") == "1"
flush_buffer = cp.zeros(256 << 20, dtype=cp.uint8) if FLUSH else None

def time_kernel(fn, step, smem, reps=200):
    grid, block, a = tuple(step["grid"]), tuple(step["block"]), args(step)
    for _ in range(10):
        fn(grid, block, a, shared_mem=smem)
    if FLUSH:
        total = 0.0
        for _ in range(reps // 4):
            flush_buffer.fill(1)
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            fn(grid, block, a, shared_mem=smem)
            end.record()
            end.synchronize()
            total += cp.cuda.get_elapsed_time(start, end)
        return total * 1000.0 / (reps // 4)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        fn(grid, block, a, shared_mem=smem)
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) * 1000.0 / reps

def touched(step):
    return sum(buffers[a["value"]["buffer"]]["bytes"] for a in step["args"] if a["kind"] == "ptr")

sources = [os.path.join(art, "kernels.cu")] + variants
mods = [module(s) for s in sources]
for step in launches.values():
    args(step)
initial = {bid: a.copy() for bid, a in allocs.items()}
for (name, _), step in launches.items():
    row = [f"{name:60s} grid {step['grid'][0]:6d} x {step['block'][0]:4d}  buffers {touched(step) / 1e6:8.1f} MB"]
    reference = None
    for src, (mod, regs) in zip(sources, mods):
        try:
            fn = mod.get_function(name)
        except Exception:
            continue
        smem = shared_bytes(src, name, step)
        if smem:
            fn.max_dynamic_shared_size_bytes = smem
        got = outputs(fn, step, smem)
        if reference is None:
            reference, check = got, ""
        else:
            check = ", same" if all(bool((x == y).all()) for x, y in zip(got, reference)) else ", DIFFERS"
        us = time_kernel(fn, step, smem)
        row.append(f"{os.path.basename(src)}: {us:7.2f} us ({regs.get(name, '?')} regs{check})")
    print("\n    ".join(row), flush=True)
