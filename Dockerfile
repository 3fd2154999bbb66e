# One image for every worker. One builder stage compiles all the worker binaries in one cargo
# invocation (the AWS SDK is compiled once, not once per worker); the runtime image carries
# them all, and the container's command picks the worker:
#
#   docker build -t queue-fleet-workers .
#   docker run --rm --env-file worker.env queue-fleet-workers /usr/local/bin/payments-worker
#
# ECS passes the worker as the task definition's `command`, Kubernetes as the container's
# `command` (deploy/keda/). The image has no default command on purpose: a task that does not
# name its worker fails to start instead of running some other one.
#
# RUST_VERSION is rust-toolchain.toml's channel and Cargo.toml's rust-version; WORKERS is every
# worker of topology.json that is deployed (not local_only), plus fleetctl for one-off
# operations tasks. integration-tests/tests/toolchain.rs and tests/deploy.rs check both.
# docs/image-and-ci.md: how to build, what is inside.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
ARG RUST_VERSION
ARG WORKERS="payments-worker books-worker posts-worker approvals-worker archive-worker approval-simulator orders-worker results-worker order-results-worker vpc-worker fleetctl"
WORKDIR /src
# The base image's toolchain builds (rust-toolchain.toml is left out of the context by
# .dockerignore, so rustup does not look for another one): make sure it is the pinned one.
RUN rustc --version | grep -q "^rustc ${RUST_VERSION} " \
    || { echo "the builder has $(rustc --version), expected ${RUST_VERSION}" >&2; exit 1; }
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    bins=""; \
    for worker in $WORKERS; do bins="$bins --bin $worker"; done; \
    cargo build --release --locked $bins; \
    mkdir -p /out/bin /out/health; \
    for worker in $WORKERS; do cp "target/release/$worker" /out/bin/; done

# glibc, CA certificates, no shell; the same Debian release as the builder (bookworm = 12).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bin/ /usr/local/bin/
# The health file's folder, owned by the worker's user: ECS copies a VOLUME's ownership to the
# task volume mounted there (the root file system stays read-only). See FLEET_HEALTH_FILE.
COPY --from=build --chown=65532:65532 /out/health /run/fleet
VOLUME ["/run/fleet"]
USER nonroot:nonroot
# Logs on stderr (JSON in ECS via FLEET_LOG_FORMAT), EMF metric lines on stdout.
ENV FLEET_LOG_FORMAT=json
# No default worker: the command names one, e.g. ["/usr/local/bin/payments-worker"].
ENTRYPOINT []
