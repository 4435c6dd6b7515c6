"""The runtime's plan for splitting an attention's last wave of query tiles
over their keys (crates/runtime/src/attention_split.rs), for check.py and
check_fp8.py, which launch the kernels as the runtime does."""


def split_plan(q_tiles, h, b, n_kv, sms):
    """(c, k): the last c query tiles of every (head, batch) run as k key
    segments each, or None when the whole-tile grid is as good."""
    per_col = h * b
    if sms <= 0 or per_col == 0:
        return None
    left = (q_tiles * per_col) % sms
    if left == 0:
        return None
    c = min(-(-left // per_col), q_tiles)
    k = min(sms // (c * per_col), n_kv)
    return (c, k) if k >= 2 else None
