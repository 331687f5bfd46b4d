# syntax=docker/dockerfile:1
#
# One small image with both binaries: `flotilla` (head, worker and driver; the entrypoint, so
# ComputeCluster pods run it) and `flotilla-operator` (the chart's Deployment runs it by name).
#
#   docker build -t flotilla:latest .
#
# Dependencies are compiled in their own layer from a cargo-chef recipe (only manifests and the
# lock file feed it), so editing the project's source does not rebuild them.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

# The recipe: workspace manifests and Cargo.lock, stripped of source.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin flotilla --bin flotilla-operator \
    && install -D -m 0755 target/release/flotilla /out/flotilla \
    && install -D -m 0755 target/release/flotilla-operator /out/flotilla-operator

# glibc and libgcc only, no shell, runs as the unprivileged user 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 7400 7401 7402 7403
ENTRYPOINT ["flotilla"]
