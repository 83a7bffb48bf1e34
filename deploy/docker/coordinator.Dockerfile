# The coordinator and the CLI (torch-free at run time): build on Debian bookworm with the
# repository's own set-up script, then copy the two binaries into a slim image with only their
# shared libraries (the list is `ldd` of both binaries resolved with `dpkg -S`).
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t knockout/coordinator .
FROM debian:bookworm AS build
WORKDIR /src
COPY . .
RUN apt-get update && apt-get install -y --no-install-recommends sudo ca-certificates \
 && scripts/setup.sh build \
 && cmake --build build -j"$(nproc)" --target knockout knockout-coordinator

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libabsl20220623 libbz2-1.0 libc-ares2 libcivetweb1 libgflags2.2 libgrpc++1.51 libgrpc29 \
      libjemalloc2 liblz4-1 libpcre2-8-0 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
      libprotobuf32 libre2-9 librocksdb7.8 libsnappy1v5 libssl3 libutf8proc2 libyaml-cpp0.7 \
      libzip4 libzstd1 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/coordinator/knockout-coordinator /src/build/cli/knockout /usr/local/bin/
RUN useradd --system --home /var/lib/knockout knockout && mkdir -p /var/lib/knockout \
 && chown knockout /var/lib/knockout
USER knockout
EXPOSE 50051 8081 9090
ENTRYPOINT ["knockout-coordinator"]
