# Byte-exact comparison and timing of fp8 attention's V layout kernel
# (attention_fp8_v_d128) in two sources: usage v_layout_check.py A.cu B.cu
# (e.g. an artifact's kernels.cu and an edited copy), over contiguous v.
# GPU machine, CuPy.
import subprocess, sys, cupy as cp
def load(path):
    cub = "/tmp/" + path.replace("/", "_") + ".cubin"
    subprocess.run(["nvcc", "-cubin", "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-o", cub, path], check=True)
    return cp.RawModule(path=cub).get_function("attention_fp8_v_d128")
fa, fb = load(sys.argv[1]), load(sys.argv[2])
for (b, s, h) in [(1, 4608, 24), (1, 4352, 24), (2, 333, 3), (1, 19, 2), (1, 4592, 3)]:
    sp = (max(s, 1) + 15) // 16 * 16
    v = (cp.random.standard_normal((b, s, h, 128), dtype=cp.float32)).view(cp.uint32) >> 16
    v = v.astype(cp.uint16)
    scale = cp.array([0.01], dtype=cp.float32)
    outs = []
    for f in (fa, fb):
        vt = cp.full((b, h, 128, sp), 0xAA, dtype=cp.uint8)
        grid = ((sp + 127) // 128, h, b)
        # v contiguous: both row sources are v (the kernel's ABI).
        row = h * 128
        args = (scale, vt, cp.int32(s), cp.int32(h), v, cp.int32(s), cp.int32(row), cp.int32(s * row),
                v, cp.int32(row), cp.int32(s * row))
        f(grid, (256,), args); cp.cuda.Device().synchronize()
        st, en = cp.cuda.Event(), cp.cuda.Event()
        st.record()
        for _ in range(200): f(grid, (256,), args)
        en.record(); en.synchronize()
        outs.append((vt, cp.cuda.get_elapsed_time(st, en) * 1000 / 200))
    same = bool((outs[0][0] == outs[1][0]).all())
    print(f"[{b},{s},{h}] same={same} original {outs[0][1]:.2f} us, variant {outs[1][1]:.2f} us", flush=True)
