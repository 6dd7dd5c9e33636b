# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a small Debian image as non-root.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && cargo build --release --locked || true
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin kore-gateway

FROM debian:bookworm-slim
# CA roots for the vendor's TLS; time-zone data is bundled in the binary (jiff tzdb-bundle-always).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
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
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/kore-gateway"]
