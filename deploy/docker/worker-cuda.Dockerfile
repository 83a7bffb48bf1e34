# The worker with a CUDA LibTorch (build-notes.md: Debian's libtorch is CPU-only). The CUDA
# LibTorch comes from pytorch.org at image build time (LIBTORCH_URL; pick the build matching the
# cluster's driver), the rest from Debian. knockout's CMake finds it through CMAKE_PREFIX_PATH
# (Torch before RocksDB, as the top-level CMakeLists.txt orders it).
#
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t knockout/worker-cuda .
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04
FROM ${CUDA_IMAGE} AS build
ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/cu124/libtorch-cxx11-abi-shared-with-deps-2.5.1%2Bcu124.zip
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build git curl unzip ca-certificates pkg-config \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libboost-dev \
      libboost-system-dev libssl-dev libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libspdlog-dev \
      libfmt-dev libpcre2-dev libutf8proc-dev libzip-dev libabsl-dev \
 && curl -fsSL "$LIBTORCH_URL" -o /tmp/libtorch.zip && unzip -q /tmp/libtorch.zip -d /opt \
 && rm /tmp/libtorch.zip
WORKDIR /src
COPY . .
# The worker needs no RocksDB, coordinator or CLI: the runtime with the agent.
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=/opt/libtorch \
      -DKNOCKOUT_BUILD_TESTS=OFF \
 && cmake --build build --target knockout-worker

FROM ${CUDA_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends libgrpc++1 libprotobuf23 \
      libyaml-cpp0.7 libutf8proc2 libzip4 libpcre2-8-0 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/libtorch/lib /opt/libtorch/lib
COPY --from=build /src/build/worker/knockout-worker /usr/local/bin/
ENV LD_LIBRARY_PATH=/opt/libtorch/lib
RUN useradd --system knockout
USER knockout
ENTRYPOINT ["knockout-worker"]
