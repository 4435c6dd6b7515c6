#!/usr/bin/env bash
# Builds, on the dev machine, everything benches/peers/run_h200.sh needs on
# the GPU machine (which has no Rust), into .dev/ (git-ignored):
#
#   .dev/commit           the commit they are built from (for the reports)
#   .dev/bin/fluxc        the CLI
#   .dev/bin/gpu-tests    the GPU test binary (tests/gpu.rs)
#   .dev/bin/gpu-fp8-tests  the runtime's fp8 GPU tests (crates/runtime/tests/gpu_fp8.rs)
#   .dev/bin/gpu-gemm-search-tests  the cuBLASLt configuration search's GPU test
#                         (crates/runtime/tests/gpu_gemm_search.rs)
#   .dev/bin/launch-bench the criterion bench of a CUDA-graph launch's host
#                         time (benches/launch.rs; run_h200.sh's `tests` step)
#   .dev/attention/       the attention kernels as codegen renders them, for
#                         benches/attention/check.py (run_h200.sh's attention step)
#   .dev/art/$MODEL-${HEIGHT}x$WIDTH-t$TEXT_TOKENS-$variant
#                         FLUX.1-$MODEL (schnell or dev) at HEIGHT×WIDTH
#                         (default 1024×1024) with TEXT_TOKENS text tokens,
#                         for each variant: bf16, fp8-tensor, fp8-row (and
#                         fp8-row-fast, fp8-tensor-fast: fast fp8 accumulation;
#                         fp8-row-image: only linears of >= 1024 rows, i.e.
#                         the text stream stays bf16; fp8-row-fast-attn:
#                         fp8-row-fast with fp8 attention)
#   .dev/base/<variant dir> with BASE=<git revision>: each variant's model
#                         compiled by that revision's fluxc (built in a git
#                         worktree under target/base-worktree), the baseline
#                         run_h200.sh times the variant against with `fluxc ab`
#   .dev/base/<variant dir> with BASE_PASSES='<toml lines>' instead: each
#                         variant's model compiled by this fluxc with those
#                         [passes] lines added (e.g. 'residual_in_gemm = false'),
#                         to A/B a toggle the same way
#
# Then carry .dev and the diffusers wheels (.whl) to the GPU machine.
set -euo pipefail
MODEL=${MODEL:-schnell}
HEIGHT=${HEIGHT:-1024}
WIDTH=${WIDTH:-1024}
TEXT_TOKENS=${TEXT_TOKENS:-512}
VARIANTS=${VARIANTS:-bf16 fp8-tensor fp8-row}
BASE=${BASE:-}
BASE_PASSES=${BASE_PASSES:-}
if [[ -n "$BASE" && -n "$BASE_PASSES" ]]; then
    echo "BASE and BASE_PASSES are two baselines: give one" >&2
    exit 2
fi
# Artifacts of earlier preparations would travel too (the carry is limited
# to 64 MiB): start from none. prepare_pipeline.sh adds its own after this.
rm -rf .dev/art .dev/models .dev/base .dev/base-models
mkdir -p .dev/bin .dev/art .dev/models
if [[ -n "$BASE" ]]; then
    # The baseline's compiler, built once per revision in its own worktree.
    base_tree=target/base-worktree
    git worktree remove --force "$base_tree" 2>/dev/null || rm -rf "$base_tree"
    git worktree add --detach "$base_tree" "$BASE"
    (cd "$base_tree" && CARGO_TARGET_DIR="$PWD/../base-target" cargo build --release -p fluxc-cli)
    base_fluxc=target/base-target/release/fluxc
    mkdir -p .dev/base
    git rev-parse --short "$BASE" > .dev/base/commit
fi
# The commit the binaries are built from, for the reports (the GPU
# machine's copy of the tree has no .git); "-dirty" with local changes.
{ git rev-parse --short HEAD; git diff --quiet HEAD || echo -dirty; } | tr -d '\n' > .dev/commit
if [[ -n "$BASE_PASSES" ]]; then
    mkdir -p .dev/base .dev/base-models
    echo "$(cat .dev/commit) with: $BASE_PASSES" > .dev/base/commit
fi
cargo build --release -p fluxc-cli
cp target/release/fluxc .dev/bin/
test_bin=$(cargo test --release --test gpu --no-run 2>&1 | grep -o 'target/release/deps/gpu-[a-z0-9]*' | head -1)
cp "$test_bin" .dev/bin/gpu-tests
test_bin=$(cargo test --release -p fluxc-runtime --test gpu_fp8 --no-run 2>&1 | grep -o 'target/release/deps/gpu_fp8-[a-z0-9]*' | head -1)
cp "$test_bin" .dev/bin/gpu-fp8-tests
test_bin=$(cargo test --release -p fluxc-runtime --test gpu_gemm_search --no-run 2>&1 | grep -o 'target/release/deps/gpu_gemm_search-[a-z0-9]*' | head -1)
cp "$test_bin" .dev/bin/gpu-gemm-search-tests
bench_bin=$(cargo bench --bench launch --no-run 2>&1 | grep -o 'target/release/deps/launch-[a-z0-9]*' | head -1)
cp "$bench_bin" .dev/bin/launch-bench
strip .dev/bin/fluxc .dev/bin/gpu-tests .dev/bin/gpu-fp8-tests .dev/bin/gpu-gemm-search-tests .dev/bin/launch-bench
cargo run --release --example render_attention -- .dev/attention
for variant in $VARIANTS; do
    extra=
    case $variant in
        bf16) fp8=off ;;
        fp8-tensor) fp8=dynamic-tensor ;;
        fp8-row) fp8=dynamic-row ;;
        fp8-row-fast) fp8=dynamic-row; extra='fp8_fast_accumulation = true' ;;
        fp8-tensor-fast) fp8=dynamic-tensor; extra='fp8_fast_accumulation = true' ;;
        fp8-row-image) fp8=dynamic-row; extra='fp8_min_rows = 1024' ;;
        fp8-row-fast-attn) fp8=dynamic-row; extra=$'fp8_fast_accumulation = true\nfp8_attention = true' ;;
        *) echo "unknown variant $variant" >&2; exit 2 ;;
    esac
    name=$MODEL-${HEIGHT}x$WIDTH-t$TEXT_TOKENS-$variant
    sed -e "s/^text_tokens = .*/text_tokens = $TEXT_TOKENS/" -e "s/^height = .*/height = $HEIGHT/" \
        -e "s/^width = .*/width = $WIDTH/" "models/flux-$MODEL.toml" > ".dev/models/$name.toml"
    printf '\n[passes]\nfp8 = "%s"\n%s\n' "$fp8" "$extra" >> ".dev/models/$name.toml"
    rm -rf ".dev/art/$name"
    .dev/bin/fluxc compile ".dev/models/$name.toml" -o ".dev/art/$name"
    if [[ -n "$BASE" ]]; then
        "$base_fluxc" compile ".dev/models/$name.toml" -o ".dev/base/$name"
    elif [[ -n "$BASE_PASSES" ]]; then
        printf '%s\n' "$BASE_PASSES" | cat ".dev/models/$name.toml" - > ".dev/base-models/$name.toml"
        .dev/bin/fluxc compile ".dev/base-models/$name.toml" -o ".dev/base/$name"
    fi
done
if [[ -n "$BASE" ]]; then
    git worktree remove --force target/base-worktree
fi
du -sh .dev
