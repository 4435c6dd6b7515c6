#!/usr/bin/env bash
# The GPU checks of fluxc on the H200 machine, in one command, from the
# repository root. Nothing is built there: bring what benches/peers/prepare.sh
# builds on the dev machine in .dev/ (binaries, and one artifact per variant),
# and diffusers' and torchao's wheels in .whl/. Steps (STEPS lists those
# to run, default "tests forward"):
#   tests    the GPU tests (every kernel kind vs the interpreter, tiny models
#            vs diffusers, fp8 vs the interpreter's fp8) and the criterion
#            bench of a CUDA-graph launch's host time
#   attention  the attention kernels alone (benches/attention/check.py and
#            check_fp8.py on .dev/attention: odd lengths, then FLUX's shapes
#            next to PyTorch's SDPA backends), reports attention.json,
#            attention_fp8.json and attention.md (issue 6's table)
#   forward  full FLUX.1-$MODEL at HEIGHT×WIDTH (default schnell, 1024×1024)
#            with TEXT_TOKENS text tokens (the same settings as prepare.sh): random
#            weights saved by diffusers, fp32 reference, diffusers eager bf16
#            and (TORCHAO=1) torchao fp8 per tensor and per row; (FLOORS=1)
#            the library floors; then `fluxc run` of every variant in
#            VARIANTS (timing, per-step profile; a variant named
#            `<variant>-tuned` is <variant>'s model compiled there with
#            `fluxc compile --tune`: kernel launches and GEMM algorithms
#            measured on that GPU; with .dev/base/ from prepare.sh's
#            BASE, first `fluxc ab` of the baseline's build of the variant
#            against this one); the torch.compile peers listed in
#            TORCH_COMPILE (any of bf16, tensor, row; each compiles for
#            minutes); and the comparison report
# TIME_LIMIT (seconds, default none): the torch.compile peers get only what
# is left of it (minus a minute for the report) and are skipped when that
# is under two minutes, so a run that must end in time still reports.
# With as many GPUs as torch.compile peers, the peers compile and run at
# once, each on its own GPU (their compiles take minutes each: bf16 and
# fp8 together do not fit one 10-minute call on one GPU).
# Inductor's cache can travel between calls (a cold compile of both
# torch.compile peers does not fit one call on one GPU): TORCH_COMPILE_CACHE_SAVE=1
# packs it into $OUT as inductor_cache.tgz.part* (at most 45 MiB; without
# Triton's compiled kernels if it is larger, which are then built again from
# the cached sources), and TORCH_COMPILE_CACHE_IN=DIR restores it from those
# parts in DIR. torch_compile.py reports a warm compile as such, with the cold
# compile time the first run recorded.
# Reports go to $OUT (default ./out), every log packed in $OUT/logs.tar.gz.
set -euo pipefail
OUT=${OUT:-out}
STEPS=${STEPS:-tests forward}
WORK=${WORK:-/tmp/fluxc-forward}
MODEL=${MODEL:-schnell}
HEIGHT=${HEIGHT:-1024}
WIDTH=${WIDTH:-1024}
TEXT_TOKENS=${TEXT_TOKENS:-512}
VARIANTS=${VARIANTS:-bf16 fp8-tensor fp8-row}
TORCHAO=${TORCHAO:-1}
FLOORS=${FLOORS:-1}
TORCH_COMPILE=${TORCH_COMPILE:-}
# The commit the reports name: the one prepare.sh built .dev from.
COMMIT=${COMMIT:-$(cat .dev/commit 2>/dev/null || echo unknown)}
# torch.compile mode of the fp8 peers: max-autotune's search over fp8 GEMM
# templates took 76-97 s per GEMM shape on the H200 (106 candidates each,
# benches/results/2026-11-29_bde70cb_torch_compile_fp8_tensor_max_autotune_killed.log),
# more than a 10-minute call holds for FLUX's ~10 shapes; ../shared/GPU.md's
# fp8 anchor (115.7 ms) is the default mode too. The mode is in the report.
TORCH_COMPILE_FP8_MODE=${TORCH_COMPILE_FP8_MODE:-default}
TIME_LIMIT=${TIME_LIMIT:-0}
TORCH_COMPILE_CACHE_IN=${TORCH_COMPILE_CACHE_IN:-}
TORCH_COMPILE_CACHE_SAVE=${TORCH_COMPILE_CACHE_SAVE:-0}
mkdir -p "$OUT"

export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
# cuDNN for artifacts compiled with cudnn_convolutions: the one in PyTorch's wheel.
cudnn_lib=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null || true)
[[ -n "$cudnn_lib" ]] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$cudnn_lib
export FLUXC_CUDA_INCLUDE=/usr/local/cuda/include:/usr/local/cuda/include/cccl
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

status=0
if [[ " $STEPS " == *" tests "* ]]; then
    # A failing test is reported at the end; the forward still runs.
    .dev/bin/gpu-fp8-tests --nocapture --test-threads=1 2>&1 | tee "$OUT/gpu_fp8_tests.log" || status=1
    .dev/bin/gpu-gemm-search-tests --nocapture 2>&1 | tee "$OUT/gpu_gemm_search_tests.log" || status=1
    .dev/bin/gpu-tests --nocapture --test-threads=1 2>&1 | tee "$OUT/gpu_tests.log" || status=1
    # The host time of a CUDA-graph launch (criterion, benches/launch.rs).
    if [[ -x .dev/bin/launch-bench ]]; then
        .dev/bin/launch-bench --bench 2>&1 | tee "$OUT/launch_bench.log" || status=1
    fi
fi

if [[ " $STEPS " == *" attention "* ]]; then
    RESULTS_JSON="$OUT/attention.json" python3 benches/attention/check.py .dev/attention full 2>&1 \
        | tee "$OUT/attention.log" || status=1
    FP8_ONLY=1 RESULTS_JSON="$OUT/attention_fp8.json" python3 benches/attention/check_fp8.py .dev/attention full 2>&1 \
        | tee "$OUT/attention_fp8.log" || status=1
    python3 benches/attention/report.py "$OUT" --commit "$COMMIT" \
        --command "STEPS='$STEPS' benches/peers/run_h200.sh" || status=1
fi

if [[ " $STEPS " == *" forward "* ]]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    torchao=()
    [[ "$TORCHAO" == 1 ]] && torchao=(--torchao)
    python3 benches/peers/make_reference.py --variant "$MODEL" --height "$HEIGHT" --width "$WIDTH" \
        --text-tokens "$TEXT_TOKENS" \
        "${torchao[@]}" --out "$WORK" 2>&1 | tee "$OUT/reference.log"
    if [[ "$FLOORS" == 1 ]]; then
        guidance=()
        [[ "$MODEL" == dev ]] && guidance=(--guidance)
        python3 benches/peers/floors.py --dir "$WORK" --height "$HEIGHT" --width "$WIDTH" \
            --text-tokens "$TEXT_TOKENS" "${guidance[@]}" 2>&1 \
            | tee "$OUT/floors.log" || status=1
    fi
    compared=()
    for variant in $VARIANTS; do
        artifact=".dev/art/$MODEL-${HEIGHT}x$WIDTH-t$TEXT_TOKENS-$variant"
        if [[ "$variant" == *-tuned ]]; then
            # The untuned variant's model compiled again here with --tune:
            # every generated kernel's launch and every GEMM's algorithm
            # measured on this GPU (timed: the tuning budget is 120 s).
            model=".dev/models/$MODEL-${HEIGHT}x$WIDTH-t$TEXT_TOKENS-${variant%-tuned}.toml"
            artifact="/tmp/fluxc-art-$variant"
            rm -rf "$artifact"
            start=$SECONDS
            .dev/bin/fluxc compile "$model" -o "$artifact" --tune --report \
                --tuning-cache "$OUT/tuning.json" > "$OUT/tune_$variant.md" 2> "$OUT/tune_$variant.log" \
                || { status=1; tail -20 "$OUT/tune_$variant.log"; continue; }
            echo "tuning $variant took $((SECONDS - start)) s" | tee -a "$OUT/tune_$variant.log"
            # What a warm cache costs: the same compile again (nothing left to
            # measure) next to a compile that tunes nothing.
            for how in warm plain; do
                flags=(--tune --tuning-cache "$OUT/tuning.json")
                [[ $how == plain ]] && flags=()
                t0=$(python3 -c 'import time; print(time.time())')
                .dev/bin/fluxc compile "$model" -o "/tmp/fluxc-art-$how" "${flags[@]}" \
                    > /dev/null 2>> "$OUT/tune_$variant.log" || status=1
                echo "compile ($how cache): $(python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.2f}")' "$t0") s" \
                    | tee -a "$OUT/tune_$variant.log"
            done
        fi
        base=".dev/base/$MODEL-${HEIGHT}x$WIDTH-t$TEXT_TOKENS-$variant"
        if [[ -d "$base" ]]; then
            # The same model compiled by the baseline revision (prepare.sh's
            # BASE): both in one process, alternating rounds.
            .dev/bin/fluxc ab "$base" "$artifact" --weights "$WORK/checkpoint" \
                --inputs "$WORK/io.safetensors" --json "$OUT/ab_$variant.json" \
                2>&1 | tee "$OUT/ab_$variant.log" || status=1
        fi
        if .dev/bin/fluxc run "$artifact" --weights "$WORK/checkpoint" \
            --inputs "$WORK/io.safetensors" --output "$WORK/fluxc_$variant.safetensors" \
            --replays 30 --warmup 5 --profile --json "$OUT/fluxc_$variant.json" \
            2>&1 | tee "$OUT/fluxc_run_$variant.log"; then
            compared+=(--fluxc "$variant" "$OUT/fluxc_$variant.json" "$WORK/fluxc_$variant.safetensors")
        else
            status=1
        fi
    done
    gpus=$(nvidia-smi -L | wc -l)
    peers=($TORCH_COMPILE)
    export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/fluxc-inductor-cache}
    if [[ -n "$TORCH_COMPILE_CACHE_IN" ]]; then
        mkdir -p "$TORCHINDUCTOR_CACHE_DIR"
        cat "$TORCH_COMPILE_CACHE_IN"/inductor_cache.tgz.part* | tar xzf - -C "$TORCHINDUCTOR_CACHE_DIR"
        echo "Inductor cache restored from $TORCH_COMPILE_CACHE_IN: $(du -sh "$TORCHINDUCTOR_CACHE_DIR" | cut -f1)"
    fi
    if (( ${#peers[@]} > 1 && gpus >= ${#peers[@]} )); then
        # One GPU per peer, all at once: their compiles (minutes each) add
        # up to more than one 10-minute device call holds. Each times its
        # forward on its own GPU (the same model of GPU as the others).
        limit=()
        if (( TIME_LIMIT > 0 )); then
            left=$((TIME_LIMIT - SECONDS - 60))
            if (( left < 120 )); then
                echo "torch.compile peers skipped: ${left} s left of TIME_LIMIT=$TIME_LIMIT" \
                    | tee "$OUT/torch_compile.log"
                peers=()
            fi
            limit=(timeout "$left")
        fi
        pids=()
        for i in "${!peers[@]}"; do
            fp8=${peers[$i]}
            [[ "$fp8" == bf16 ]] && fp8=off
            mode=()
            [[ "$fp8" != off ]] && mode=(--mode "$TORCH_COMPILE_FP8_MODE")
            CUDA_VISIBLE_DEVICES=$i "${limit[@]}" python3 benches/peers/torch_compile.py --dir "$WORK" \
                --fp8 "$fp8" "${mode[@]}" --timings-out "$WORK/timing_torch_compile_$fp8.json" \
                > "$OUT/torch_compile_$fp8.log" 2>&1 &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || status=1; done
        python3 - "$WORK" <<'MERGE'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
path = work / "diffusers.json"
timings = json.loads(path.read_text())
for part in sorted(work.glob("timing_torch_compile_*.json")):
    timings.update(json.loads(part.read_text()))
path.write_text(json.dumps(timings, indent=2))
MERGE
    else
        for fp8 in $TORCH_COMPILE; do
            [[ "$fp8" == bf16 ]] && fp8=off
            limit=()
            if (( TIME_LIMIT > 0 )); then
                left=$((TIME_LIMIT - SECONDS - 60))
                if (( left < 120 )); then
                    echo "torch.compile $fp8 skipped: ${left} s left of TIME_LIMIT=$TIME_LIMIT" | tee "$OUT/torch_compile_$fp8.log"
                    continue
                fi
                limit=(timeout "$left")
            fi
            mode=()
            [[ "$fp8" != off ]] && mode=(--mode "$TORCH_COMPILE_FP8_MODE")
            "${limit[@]}" python3 benches/peers/torch_compile.py --dir "$WORK" --fp8 "$fp8" "${mode[@]}" 2>&1 \
                | tee "$OUT/torch_compile_$fp8.log" || status=1
        done
    fi
    if [[ "$TORCH_COMPILE_CACHE_SAVE" == 1 && -d "$TORCHINDUCTOR_CACHE_DIR" ]]; then
        du -sh "$TORCHINDUCTOR_CACHE_DIR"/* | tee "$OUT/inductor_cache.log"
        tar czf /tmp/inductor_cache.tgz -C "$TORCHINDUCTOR_CACHE_DIR" .
        if (( $(stat -c %s /tmp/inductor_cache.tgz) > 45 * 1024 * 1024 )); then
            echo "cache over 45 MiB packed: leaving out triton/" | tee -a "$OUT/inductor_cache.log"
            tar czf /tmp/inductor_cache.tgz -C "$TORCHINDUCTOR_CACHE_DIR" --exclude=./triton .
        fi
        ls -l /tmp/inductor_cache.tgz | tee -a "$OUT/inductor_cache.log"
        split -b 15M -d /tmp/inductor_cache.tgz "$OUT/inductor_cache.tgz.part"
    fi
    if (( ${#compared[@]} )); then
        python3 benches/peers/compare.py --dir "$WORK" "${compared[@]}" --commit "$COMMIT" \
            --command "${TORCH_COMPILE_CACHE_IN:+TORCH_COMPILE_CACHE_IN=$TORCH_COMPILE_CACHE_IN }MODEL=$MODEL HEIGHT=$HEIGHT WIDTH=$WIDTH TEXT_TOKENS=$TEXT_TOKENS VARIANTS='$VARIANTS' TORCHAO=$TORCHAO FLOORS=$FLOORS TORCH_COMPILE='$TORCH_COMPILE' TORCH_COMPILE_FP8_MODE=$TORCH_COMPILE_FP8_MODE benches/peers/run_h200.sh" \
            --name "forward_${MODEL}_${HEIGHT}x${WIDTH}_t$TEXT_TOKENS" --out "$OUT"
    fi
fi
# The device returns only a few files: keep the reports, pack the logs.
(cd "$OUT" && tar czf logs.tar.gz --remove-files \
    $(ls | grep -v -e '^forward_.*\.\(md\|json\)$' -e '^attention\(_fp8\)\?\.\(json\|md\)$' -e '^logs.tar.gz$' -e '^inductor_cache\.tgz\.part' -e '^ab_.*\.json$'))
exit $status
