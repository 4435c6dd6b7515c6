"""What check.py and check_fp8.py share: the runtime's plan for splitting an
attention's last wave of query tiles over their keys
(crates/runtime/src/attention_split.rs), which both follow so that they
launch the kernels as the runtime does, and how both time a launch."""

import os


def split_sms(device_sms):
    """The SM count to plan splits for: SPLIT_SMS, else the device's; None
    with SPLIT=0 (every tile whole)."""
    if os.environ.get("SPLIT", "1") != "1":
        return None
    return int(os.environ.get("SPLIT_SMS", "0")) or device_sms


def split_plan(q_tiles, h, b, n_kv, sms):
    """(c, k): the last c query tiles of every (head, batch) run as k key
    segments each, or None when the whole-tile grid is as good (or sms is
    None)."""
    per_col = h * b
    if not sms or per_col == 0:
        return None
    left = (q_tiles * per_col) % sms
    if left == 0:
        return None
    c = min(-(-left // per_col), q_tiles)
    k = min(sms // (c * per_col), n_kv)
    return (c, k) if k >= 2 else None


def median_ms(fn, n=20, reps=5):
    """fn's time per call, ms: the median of reps batches of n calls after 5
    warm-up calls (one batch of 30 put two identical launches 5% apart)."""
    import torch
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        st.record()
        for _ in range(n):
            fn()
        en.record()
        torch.cuda.synchronize()
        times.append(st.elapsed_time(en) / n)
    return sorted(times)[reps // 2]
