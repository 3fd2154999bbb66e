# One image per worker: docker build --build-arg WORKER=payments-worker -t payments-worker .
# Multi-stage: the build needs the Rust toolchain; the image holds one static-ish binary on a
# distroless base (glibc, CA certificates, no shell), running as a non-root user.
ARG RUST_VERSION=1.86

FROM rust:${RUST_VERSION}-bookworm AS build
ARG WORKER
WORKDIR /src
COPY . .
RUN test -n "$WORKER" || (echo "build with --build-arg WORKER=<worker binary>, e.g. payments-worker" >&2; exit 1)
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin "$WORKER" \
    && cp "target/release/$WORKER" /worker \
    && mkdir -p /health

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /worker /usr/local/bin/worker
# The health file's folder, owned by the worker's user: ECS copies a VOLUME's ownership to the
# task volume mounted there (the root file system stays read-only). See FLEET_HEALTH_FILE.
COPY --from=build --chown=65532:65532 /health /run/fleet
VOLUME ["/run/fleet"]
USER nonroot:nonroot
# Logs on stderr (JSON in ECS via FLEET_LOG_FORMAT), EMF metric lines on stdout.
ENV FLEET_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/worker"]
