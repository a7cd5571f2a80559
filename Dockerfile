# syntax=docker/dockerfile:1.7
# The torhaus image: built the way the project builds itself (scripts/install-deps.sh build, then
# `cargo build --release -p torhaus --locked`), run as a non-root user on Debian slim.
#   docker build -t torhaus:dev .
# The build and runtime stages use the same Debian release, so the glibc the binary was linked
# against is the one it runs with.

ARG RUST_VERSION=1.92
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# The project's own build prerequisites (cmake and a C toolchain for pingora's dependencies),
# in a layer of their own so that source changes do not reinstall them.
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh build && rm -rf /var/lib/apt/lists/*
COPY . .
# As in the project, the target directory lives outside the source tree; here in a cache mount
# kept between builds, so the binary is copied out of it.
ENV CARGO_TARGET_DIR=/cargo-target
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/cargo-target \
    cargo build --release -p torhaus --locked \
    && install -D -m 0755 /cargo-target/release/torhaus /out/torhaus

FROM debian:${DEBIAN_RELEASE}-slim
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The user torhaus runs as (65532, "nonroot" by the distroless convention); the chart's
# podSecurityContext uses the same fixed UID/GID.
ARG UID=65532
# The binary is installed and given its file capability in one layer: COPY does not reliably keep
# the security.capability attribute, and a setcap in a later layer would store the binary twice.
# cap_net_bind_service lets the non-root user bind ports 80 and 443 (the DaemonSet keeps
# NET_BIND_SERVICE in the bounding set and allowPrivilegeEscalation true, without which the
# kernel ignores file capabilities). ca-certificates: ACME directories and OIDC issuers on the
# public internet. Debian package versions are not pinned: a stable release's point updates
# are security fixes, and pinned versions vanish from the mirrors.
# hadolint ignore=DL3008
RUN --mount=type=bind,from=build,source=/out,target=/out \
    apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
    && install -m 0755 /out/torhaus /usr/local/bin/torhaus \
    && setcap cap_net_bind_service=+ep /usr/local/bin/torhaus \
    && apt-get purge -y --auto-remove libcap2-bin \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid "${UID}" nonroot \
    && useradd --uid "${UID}" --gid "${UID}" --no-create-home --home-dir /var/lib/torhaus \
       --shell /usr/sbin/nologin nonroot \
    && install -d -m 0700 -o "${UID}" -g "${UID}" /var/lib/torhaus
# mimalloc returns memory freed after start-up instead of keeping its arenas committed: about
# 2-3 MiB less idle RSS, no measurable throughput cost (bench/RESULTS.md, session 9).
ENV TORHAUS_STATE_DIR=/var/lib/torhaus \
    MIMALLOC_ARENA_EAGER_COMMIT=0
USER 65532:65532
WORKDIR /var/lib/torhaus
# HTTP and HTTPS listeners, and the admin listener (/healthz, /readyz, /metrics).
EXPOSE 80 443 9901
ENTRYPOINT ["/usr/local/bin/torhaus"]
CMD ["run", "--kubernetes"]
