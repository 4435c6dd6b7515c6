#!/usr/bin/env bash
# On the GPU machine: fp8 attention with every
# N-th f16 pair of exponentials on the FMA pipe, for several N (0: none),
# each checked (check_fp8.py full) and timed (bursts, alternating, twice),
# then its energy per call at the power limit (benches/power/energy.py).
# usage: benches/attention/exp2_share.sh KERNEL_DIR [N ...]
# KERNEL_DIR: `cargo run --release --example render_attention -- DIR` output.
set -u
base=$1; shift
shares=${*:-0 8 4 3 2}
out=${OUT:-/tmp}
for n in $shares; do
    d=/tmp/exp2_share_$n
    rm -rf "$d"; cp -r "$base" "$d"
    sed -i "s/constexpr int EXP2_POLY_EVERY = [0-9]*;/constexpr int EXP2_POLY_EVERY = $n;/" "$d/attention_fp8_d128.cu"
    grep -q "EXP2_POLY_EVERY = $n;" "$d/attention_fp8_d128.cu" || { echo "no EXP2_POLY_EVERY in $base"; exit 1; }
    echo "== every $n: check"
    FP8_ONLY=1 timeout 200 python3 benches/attention/check_fp8.py "$d" full > "$out/exp2_share_${n}_check.log" 2>&1
    grep -E 'FAIL|ALL' "$out/exp2_share_${n}_check.log"
done
for round in 1 2; do
    for n in $shares; do
        echo "== every $n: time (round $round)"
        FP8_ONLY=1 timeout 100 python3 benches/attention/check_fp8.py /tmp/exp2_share_$n time 2>&1 | grep TIME
    done
done
for n in $shares; do
    echo "== every $n: energy"
    ONLY=attention timeout 100 python3 benches/power/energy.py /tmp/exp2_share_$n 2>&1 | grep '^{' | grep -v idle
done
