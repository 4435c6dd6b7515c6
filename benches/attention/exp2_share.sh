#!/usr/bin/env bash
# On the GPU machine: fp8 attention with the last K of every N f16 pairs of
# exponentials on the FMA pipe (h2_exp2_fma_poly), for several shares K/N
# (0/1: none), each checked (check_fp8.py full) and timed (bursts,
# alternating, twice), then its energy per call at the power limit
# (benches/power/energy.py).
# usage: benches/attention/exp2_share.sh KERNEL_DIR [K/N ...]
# KERNEL_DIR: `cargo run --release --example render_attention -- DIR` output.
set -u
base=$1; shift
shares=${*:-0/1 1/3 1/2 2/3}
out=${OUT:-/tmp}
dir_of() { echo "/tmp/exp2_share_${1/\//_}"; }  # K/N -> its kernel copy
for share in $shares; do
    k=${share%/*}; n=${share#*/}; d=$(dir_of "$share")
    rm -rf "$d"; cp -r "$base" "$d"
    sed -i -e "s/constexpr int EXP2_POLY_PAIRS = [0-9]*;/constexpr int EXP2_POLY_PAIRS = $k;/" \
        -e "s/constexpr int EXP2_POLY_GROUP = [0-9]*;/constexpr int EXP2_POLY_GROUP = $n;/" "$d/attention_fp8_d128.cu"
    grep -q "EXP2_POLY_PAIRS = $k;" "$d/attention_fp8_d128.cu" && grep -q "EXP2_POLY_GROUP = $n;" "$d/attention_fp8_d128.cu" \
        || { echo "no EXP2_POLY_PAIRS/GROUP in $base"; exit 1; }
    echo "== $share: check"
    FP8_ONLY=1 timeout 200 python3 benches/attention/check_fp8.py "$d" full > "$out/exp2_share_${k}_${n}_check.log" 2>&1
    grep -E 'FAIL|ALL' "$out/exp2_share_${k}_${n}_check.log"
done
for round in 1 2; do
    for share in $shares; do
        echo "== $share: time (round $round)"
        FP8_ONLY=1 timeout 100 python3 benches/attention/check_fp8.py "$(dir_of "$share")" time 2>&1 | grep TIME | sed 's/, fluxc_fp8_v_layout.*//'
    done
done
for share in $shares; do
    echo "== $share: energy"
    ONLY=attention timeout 100 python3 benches/power/energy.py "$(dir_of "$share")" 2>&1 | grep '^{' | grep -v idle
done
