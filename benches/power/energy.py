# Energy per call of the forward's big kernels on the GPU machine, each run
# back to back for a few seconds (long enough for the power limit to act):
# time per call, joules per call (NVML's energy counter), mean power and SM
# clock, and picojoules per FLOP or per byte moved.
#
# Why: the FLUX forward runs at the H200's power limit (~690 W; the SM clock
# drops to ~1550 MHz, clocks_event_reasons = SW power cap), so its time is
# about its energy divided by the limit, and a kernel's cost is its energy
# more than its time alone. See docs/performance.md.
#
# usage: energy.py ATTENTION_DIR   (render_attention's output, as for
# benches/attention/check_fp8.py). Needs torch (the fp8 GEMMs through
# torch._scaled_mm, cuDNN attention) and CuPy. ONLY=attention measures
# fluxc's fp8 attention alone.
import ctypes, json, os, sys, time
import torch

nvml = ctypes.CDLL("libnvidia-ml.so.1")
assert nvml.nvmlInit_v2() == 0
device = ctypes.c_void_p()
assert nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(device)) == 0

def energy_mj():
    e = ctypes.c_ulonglong()
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(device, ctypes.byref(e)) == 0
    return e.value

def sm_clock_mhz():
    c = ctypes.c_uint()
    assert nvml.nvmlDeviceGetClockInfo(device, 1, ctypes.byref(c)) == 0  # NVML_CLOCK_SM
    return c.value

def sustained(name, fn, flop=None, bytes_moved=None, seconds=4.0, batch=20):
    # Warm up for a second (the power limit acts within it), then count
    # energy and time over whole batches.
    t0 = time.time()
    while time.time() - t0 < 1.0:
        for _ in range(batch): fn()
        torch.cuda.synchronize()
    calls, clocks = 0, []
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0 = energy_mj(); t0 = time.time(); st.record()
    while time.time() - t0 < seconds:
        for _ in range(batch): fn()
        calls += batch
        torch.cuda.synchronize()
        clocks.append(sm_clock_mhz())
    en.record(); torch.cuda.synchronize()
    e1 = energy_mj()
    us = st.elapsed_time(en) * 1e3 / calls
    mj = (e1 - e0) / calls
    row = {"name": name, "us_per_call": us, "mj_per_call": mj, "watts": mj / us * 1e3,
           "sm_mhz": sum(clocks) / len(clocks), "calls": calls}
    if flop:
        row["tflops"] = flop / us / 1e6
        row["pj_per_flop"] = mj * 1e-3 / flop * 1e12
    if bytes_moved:
        row["tb_per_s"] = bytes_moved / us / 1e6
        row["pj_per_byte"] = mj * 1e-3 / bytes_moved * 1e12
    print(json.dumps(row), flush=True)
    measured.append(row)
    time.sleep(3.0)  # cool down a little between workloads

measured = []
idle0 = energy_mj(); time.sleep(2.0)
print(json.dumps({"name": "idle", "watts": (energy_mj() - idle0) / 2000.0, "sm_mhz": sm_clock_mhz()}),
      flush=True)

# fluxc's fp8 attention at FLUX's shape (check_fp8.py's setup, random data).
sys.argv = ["check_fp8.py", sys.argv[1], "none"]
exec(open("benches/attention/check_fp8.py").read().split("\ncases = ")[0])
b, h, s = 1, 24, 4608
att_flop = 4.0 * b * h * s * s * 128
c = Case(b, h, s, s); c.layout(); torch.cuda.synchronize()
sustained("fluxc fp8 attention [1,24,4608,128]", c.attend, flop=att_flop)
c.q8.zero_(); c.k8.zero_(); c.vt.zero_()
sustained("fluxc fp8 attention, all-zero operands", c.attend, flop=att_flop)
del c
if os.environ.get("ONLY") == "attention":
    sys.exit(0)

# cuDNN bf16 attention (PyTorch SDPA), same shape.
from torch.nn.attention import sdpa_kernel, SDPBackend
q, k, v = (torch.randn(b, h, s, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    sustained("cuDNN bf16 attention [1,24,4608,128]",
              lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), flop=att_flop)
del q, k, v

# The single blocks' fused projection: [4608, 3072] x [3072, 21504], fp8 in,
# bf16 out, per-tensor scales (cuBLASLt) and per-row scales.
m, kdim, n = 4608, 3072, 21504
x = (torch.randn(m, kdim, device="cuda") * 0.5).to(torch.float8_e4m3fn)
w = (torch.randn(n, kdim, device="cuda") * 0.5).to(torch.float8_e4m3fn)
one = torch.ones((), device="cuda")
gemm_flop = 2.0 * m * n * kdim
sustained("fp8 GEMM per tensor 4608x21504x3072 (torch._scaled_mm)",
          lambda: torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
          flop=gemm_flop)
sa, sb = torch.ones(m, 1, device="cuda"), torch.ones(1, n, device="cuda")
sustained("fp8 GEMM per row 4608x21504x3072 (torch._scaled_mm)",
          lambda: torch._scaled_mm(x, w.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16),
          flop=gemm_flop)
xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
sustained("bf16 GEMM 4608x21504x3072", lambda: xb @ wb.t(), flop=gemm_flop)
del x, w, xb, wb

# DRAM: a 256 MB copy (read + write).
src = torch.empty(256 << 20, dtype=torch.uint8, device="cuda").fill_(7)
dst = torch.empty_like(src)
sustained("copy 256 MB", lambda: dst.copy_(src), bytes_moved=2 * src.numel())

if os.environ.get("RESULTS_JSON"):
    json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": measured},
              open(os.environ["RESULTS_JSON"], "w"), indent=2)
