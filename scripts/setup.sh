#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian bookworm machine: installs every apt package that the
# build, the tests, the benchmarks and the demo need, then configures the build with ccache.
# Usage: scripts/setup.sh [BUILD_DIR]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  clang libclang-rt-14-dev                       # libFuzzer target for the safetensors parser
  libtorch-dev libopenblas0-openmp               # without OpenBLAS matmul is ~30x slower
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libboost-dev libboost-system-dev
  prometheus-cpp-dev libssl-dev openssl          # coordinator metrics endpoint, TLS
  libjemalloc-dev                                # the coordinator's allocator (optional)
  iproute2 nftables                              # multi-host test: network namespaces, partitions
  slurmctld slurmd slurm-client munge            # deploy/slurm's test on a single-node Slurm
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libpcre2-dev
  libutf8proc-dev                                # NFC/NFKC normalizers of tokenizers
  libzip-dev                                     # Gemma Scope params.npz (formats/sae)
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-torch python3-numpy                    # independent numerical reference (/usr/bin/python3)
  wordnet-base                                   # ordinary English for the demo organism's corpus v3
  chromium                                       # `knockout report` rendered in a real browser
  zsh                                            # `knockout completion zsh` loaded in a real zsh
)

# The tokenizer tests compare against a JavaScript reference from the npm registry. Keep an
# existing Node.js (it may come from another repository, whose nodejs conflicts with Debian's npm).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
  -DCMAKE_C_COMPILER_LAUNCHER=ccache
