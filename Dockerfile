# syntax=docker/dockerfile:1.7
#
# vargpt-rs images: vargpt-worker, vargpt-dispatcher and the vargpt CLI.
#
#   CPU  (default):  docker build -t vargpt-rs/vargpt:dev-cpu .
#   CUDA:            docker build --build-arg VARIANT=cuda \
#                      --build-arg CUDA_COMPUTE_CAP=90 -t vargpt-rs/vargpt:dev-cuda .
#
# VARIANT picks both the builder (toolchain) and the runtime base image:
#   cpu  -> rust:<ver>-slim-bookworm            / debian:bookworm-slim
#   cuda -> nvidia/cuda:<ver>-devel-ubuntu22.04 / nvidia/cuda:<ver>-runtime-ubuntu22.04
# Builder and runtime always share a distribution so the glibc matches.
# The cuda variant builds the worker with its `cuda` and `nccl` features
# (`cargo build --release -p vargpt-worker --features cuda,nccl`); override
# with --build-arg CUDA_FEATURES=vargpt-worker/cuda to leave NCCL out.
# Default command: `vargpt-worker serve` (the RabbitMQ service).
# BuildKit is required (cache mounts); only the stages of the chosen variant
# are built.

ARG VARIANT=cpu
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG CUDA_VERSION=12.4.1
ARG CUDA_UBUNTU=ubuntu22.04

# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN --mount=type=cache,id=vargpt-apt-cpu,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=vargpt-apt-lists-cpu,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        g++ make cmake pkg-config protobuf-compiler ca-certificates

FROM nvidia/cuda:${CUDA_VERSION}-devel-${CUDA_UBUNTU} AS builder-cuda
ARG RUST_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH}
# hadolint ignore=DL3008
RUN --mount=type=cache,id=vargpt-apt-cuda,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=vargpt-apt-lists-cuda,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config protobuf-compiler ca-certificates curl \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}" \
    && rustc --version

# ---------------------------------------------------------------------------
# Build (shared by both variants)
# ---------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM builder-${VARIANT} AS build
ARG VARIANT
# The commit results name in provenance.workerVersion (the build context has
# no .git): docker build --build-arg VARGPT_GIT_COMMIT=$(git rev-parse --short HEAD)
ARG VARGPT_GIT_COMMIT=unknown
ENV VARGPT_GIT_COMMIT=${VARGPT_GIT_COMMIT}
# Packages built and the binaries copied into the runtime image
# (vargpt-cli builds the `vargpt` binary).
ARG PACKAGES="vargpt-worker vargpt-dispatcher vargpt-cli"
ARG BINARIES="vargpt-worker vargpt-dispatcher vargpt"
# Features of the cuda variant: the worker's GPU kernels (candle CUDA backend)
# and NCCL all-reduce between the GPUs of a tensor-parallel group (VARGPT_TP > 1).
# Package-qualified, so only the worker is built against CUDA.
ARG CUDA_FEATURES="vargpt-worker/cuda,vargpt-worker/nccl"
# Extra cargo features for either variant (package-qualified, comma separated).
ARG CARGO_FEATURES=""
# GPU architecture the CUDA kernels are compiled for (no GPU at build time):
# 80 = A100 (PTX also runs on H100), 89 = L4/L40S, 90 = H100/H200.
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=vargpt-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=vargpt-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=vargpt-target-${VARIANT},target=/src/target,sharing=locked \
    features="${CARGO_FEATURES}" \
    && if [ "${VARIANT}" = "cuda" ]; then features="${CUDA_FEATURES}${features:+,${features}}"; fi \
    && set -- && for pkg in ${PACKAGES}; do set -- "$@" -p "${pkg}"; done \
    && cargo build --release --locked "$@" ${features:+--features "${features}"} \
    && mkdir -p /out \
    && for bin in ${BINARIES}; do install -m 0755 "target/release/${bin}" /out/; done

# ---------------------------------------------------------------------------
# Runtimes
# ---------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime-cpu

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${CUDA_UBUNTU} AS runtime-cuda
# The worker runs on the CPU unless it is given a GPU: the CUDA image defaults
# to GPU 0 (VARGPT_CUDA_DEVICE); tensor parallelism takes VARGPT_TP GPUs from
# there, or the ordinals in VARGPT_DEVICES (the Helm chart sets both).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    VARGPT_CUDA_DEVICE=0

# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
ARG VARIANT
ARG VERSION=0.1.0
ARG UID=10001
ARG GID=10001
LABEL org.opencontainers.image.title="vargpt-rs" \
      org.opencontainers.image.description="VARGPT multimodal job worker (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# curl: HEALTHCHECK; ca-certificates: amqps:// and https S3 endpoints.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "${GID}" vargpt \
    && useradd --system --uid "${UID}" --gid vargpt --home-dir /home/vargpt \
        --create-home --shell /usr/sbin/nologin vargpt \
    && mkdir -p /models/hf /data/results \
    && chown -R "${UID}:${GID}" /models /data

COPY --from=build /out/ /usr/local/bin/

# 12-factor defaults (names: `vargpt-worker serve --help`); everything else
# (AMQP_URL, VARGPT_S3_BUCKET, credentials) comes from the environment at run
# time. VARGPT_HTTP_ADDR defaults to 127.0.0.1 in the worker: a container must
# listen on 0.0.0.0 or no probe reaches it.
ENV HF_HOME=/models/hf \
    VARGPT_HTTP_ADDR=0.0.0.0:9090 \
    VARGPT_LOG_FORMAT=json \
    RUST_LOG=info

# Model cache: mount a volume (or a Kubernetes PVC / emptyDir) here.
VOLUME ["/models"]
WORKDIR /home/vargpt
USER ${UID}:${GID}
EXPOSE 9090
STOPSIGNAL SIGTERM
# Liveness only (readiness is /readyz, checked by compose and Kubernetes).
# The port follows VARGPT_HTTP_ADDR at run time.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS \"http://127.0.0.1:${VARGPT_HTTP_ADDR##*:}/healthz\" >/dev/null || exit 1"]
# The service: consume jobs from RabbitMQ (needs AMQP_URL and VARGPT_S3_BUCKET).
# Other entry points: `vargpt-worker embedded ...`, `vargpt-dispatcher run ...`, `vargpt`.
CMD ["vargpt-worker", "serve"]
