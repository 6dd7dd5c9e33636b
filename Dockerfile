# syntax=docker/dockerfile:1
# Multi-stage build: dependencies cached by cargo-chef, the gateway compiled without the
# simulator (--no-default-features), run in a small Debian image as non-root.
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /src

# The recipe: only the manifests and the lock file, so it changes only when they do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json --bin kore-gateway

# Dependencies first (a layer cached until the recipe changes; a failure fails the build),
# then the gateway itself, exactly as locked.
FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --no-default-features --bin kore-gateway --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --no-default-features -p kore-gateway --bin kore-gateway

FROM debian:bookworm-slim
# CA roots for the vendor's TLS; curl for the health check. Time-zone data is bundled in
# the binary (jiff tzdb-bundle-always).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates=20230311* \
        curl=7.88.1-10+deb12u* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/cache/kore-gateway && chown 10001:10001 /var/cache/kore-gateway
COPY --from=build /src/target/release/kore-gateway /usr/local/bin/kore-gateway
USER 10001:10001
# One malloc arena per process keeps the peak a few MiB lower with a full cache (BENCHMARKS.md §5).
ENV GATEWAY_LISTEN=0.0.0.0:8080 \
    LOG_FORMAT=json \
    MALLOC_ARENA_MAX=2 \
    CACHE_DIR=/var/cache/kore-gateway
# The on-disk cache tier: mount a volume here so windows survive restarts and deploys.
VOLUME ["/var/cache/kore-gateway"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/kore-gateway"]
