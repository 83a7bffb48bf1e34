#!/usr/bin/env bash
# The GPU check (issue 15): everything a lent GPU machine needs, in one run.
#   1. configure and build the model runtime alone (-DKNOCKOUT_RUNTIME_ONLY=ON) against the
#      machine's LibTorch: Python torch's bundled one if `python3 -c 'import torch'` works (a CUDA
#      wheel on a GPU machine), else the system's (Debian's libtorch-dev);
#   2. write the reference checkpoints (tests/reference/hf_reference.py, float64/float32 from the
#      published equations) and run the runtime's numerics tests on the device: logits of every
#      variant (Llama, Qwen2, Mistral, Gemma 2; f32 and bf16 storage) within 1e-4 in float32,
#      bfloat16 compute within its documented tolerance, KV-cache generation equal to the
#      reference's no-cache loop;
#   3. write a random model (Llama-3.2-1B's shape with --size 1b, the 134M bench model with
#      --size 134m), load it on the device in bf16, time a 512-token forward pass and a head
#      sweep (every head of every layer zero-ablated at the last 6 of 64 tokens, --sweep-prompts
#      prompts in blocks of 128 rows, prefixes reused as the shard executor does: load_rss_bench
#      --head-sweep), sampling the card's memory meanwhile (nvidia-smi every 50 ms: the peak
#      includes the CUDA context);
#   4. print one short table.
# It must also run on CPU (--device cpu; CI does, with --size 134m) so that it is known to work
# before a GPU machine is lent.
#
# Usage: scripts/gpu-check.sh [--device cuda|cuda:N|cpu] [--size 1b|134m] [--build-dir DIR]
#                             [--python PYTHON] [--sweep-prompts N]
# Defaults: --device cuda, --size 1b, --build-dir build-gpu-check, --python python3,
# --sweep-prompts 128 on a GPU and 8 on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
size=1b
build_dir=build-gpu-check
python=python3
sweep_prompts=
while (($#)); do
  case $1 in
    --device) device=$2; shift ;;
    --size) size=$2; shift ;;
    --build-dir) build_dir=$2; shift ;;
    --python) python=$2; shift ;;
    --sweep-prompts) sweep_prompts=$2; shift ;;
    *) echo "usage: $0 [--device cuda|cuda:N|cpu] [--size 1b|134m] [--build-dir DIR] [--python PYTHON] [--sweep-prompts N]" >&2
       exit 2 ;;
  esac
  shift
done
case $size in 1b|134m) ;; *) echo "$0: --size must be 1b or 134m" >&2; exit 2 ;; esac
case $device in cpu|cuda|cuda:[0-9]*) ;; *) echo "$0: --device must be cpu, cuda or cuda:N" >&2; exit 2 ;; esac
if [[ -z $sweep_prompts ]]; then
  if [[ $device == cpu ]]; then sweep_prompts=8; else sweep_prompts=128; fi
fi
[[ $sweep_prompts =~ ^[1-9][0-9]*$ ]] || { echo "$0: --sweep-prompts must be a positive integer" >&2; exit 2; }
if ! "$python" -c 'import torch' 2>/dev/null; then
  echo "$0: $python cannot import torch (the reference needs it; install python3-torch)" >&2
  exit 2
fi
start=$(date +%s)
mkdir -p "$build_dir"
build_dir=$(cd "$build_dir" && pwd)
logs="$build_dir/gpu-check"

# 1. The runtime alone, against the LibTorch that Python's torch ships (or the system's).
prefix=$("$python" -c 'import torch, os; p = torch.utils.cmake_prefix_path; print(p if os.path.isdir(os.path.join(p, "Torch")) else "")' 2>/dev/null || true)
torch_version=$("$python" -c 'import torch; print(torch.__version__)')
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build_dir" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DKNOCKOUT_RUNTIME_ONLY=ON -DKNOCKOUT_BUILD_TESTS=ON -DKNOCKOUT_BUILD_BENCH=ON \
  ${prefix:+-DCMAKE_PREFIX_PATH="$prefix"} >"$logs-configure.log" 2>&1 ||
  { cat "$logs-configure.log" >&2; exit 1; }
cmake --build "$build_dir" -j"$(nproc)" --target model_test load_rss_bench >"$logs-build.log" 2>&1 ||
  { tail -40 "$logs-build.log" >&2; exit 1; }

# 2. Numerics on the device against the independent reference.
fixtures="$build_dir/reference-checkpoints"
tests/reference/write_fixtures.sh "$fixtures" "$(command -v "$python")" >/dev/null
numerics=ok
KNOCKOUT_REFERENCE_DIR="$fixtures" KNOCKOUT_TEST_DEVICE="$device" \
  "$build_dir/worker/model/model_test" \
  --gtest_filter='Variants/ReferenceLogitsTest.*:ReferenceLogitsTest.*:Variants/GenerateTest.*' \
  >"$logs-numerics.log" 2>&1 || numerics=FAILED
passed=$(grep -c '^\[       OK \]' "$logs-numerics.log" || true)
failed=$(grep -c '^\[  FAILED  \] .*(' "$logs-numerics.log" || true)

# 3. A random model of real size: load in bf16 on the device, time a 512-token forward pass.
model_dir="$build_dir/random-$size"
rm -rf "$model_dir"
"$build_dir/bench/load_rss_bench" write "$model_dir" --size "$size" --storage bf16 >/dev/null
card=cpu
sampler=
if [[ $device == cuda* ]] && command -v nvidia-smi >/dev/null; then
  index=${device#cuda}; index=${index#:}; index=${index:-0}
  card=$(nvidia-smi --query-gpu=name --format=csv,noheader -i "$index" | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$index" -lms 50 \
    >"$logs-gpu-memory.log" 2>/dev/null &
  sampler=$!
  trap 'kill "$sampler" 2>/dev/null || true' EXIT  # also if the timing below fails
fi
timing=$("$build_dir/bench/load_rss_bench" load "$model_dir" --dtype bf16 --device "$device" \
  --forward 512 --head-sweep "$sweep_prompts" --sweep-tokens 64 --sweep-post 6 --batch-rows 128)
if [[ -n $sampler ]]; then
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  gpu_mem="$(sort -n "$logs-gpu-memory.log" | tail -1) MiB"
fi
rm -rf "$model_dir"
field() { "$python" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$timing" "$1"; }

# 4. The table.
fused=$(grep -o 'fused attention: [a-z]*' "$logs-numerics.log" | head -1 | cut -d' ' -f3)
printf '\n| card | LibTorch (fused attention) | numerics (tests passed / failed) | model | load s | forward tokens/s (512 tokens, bf16) | head sweep trials/s (%s prompts) | peak host RSS | peak GPU memory |\n' "$sweep_prompts"
printf '|---|---|---|---|---|---|---|---|---|\n'
printf '| %s | %s (%s) | %s (%s / %s) | %s | %.2f | %.1f | %.2f | %.2f GB | %s |\n' "$card" "$torch_version" \
  "${fused:-?}" "$numerics" "$passed" "$failed" "$size" "$(field load_seconds)" \
  "$(field forward_tokens_per_s)" "$(field head_sweep_trials_per_s)" \
  "$("$python" -c "print($(field peak_rss_after_sweep) / 1e9)")" "${gpu_mem:-n/a}"
echo "gpu-check: $(($(date +%s) - start)) s; logs: $logs-{configure,build,numerics}.log" >&2
[[ $numerics == ok ]]
