# pail: one image for the CSI node plugin, the CSI controller and `pail mount`.
# Build: docker build -t pail:dev .   (or buildah bud; see tests/e2e/ for the offline path)

FROM docker.io/library/rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && strip target/release/pail

FROM docker.io/library/debian:12.11-slim
# fuse3: fusermount3 for `pail mount` run by hand as non-root; ca-certificates: TLS to the stores.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3=3.14.0-4 ca-certificates=20250419~deb12u2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pail /usr/bin/pail
COPY LICENSE /usr/share/doc/pail/LICENSE
# The controller runs as this user; the node plugin's pod runs as root (it mounts, see the chart).
USER 65532:65532
ENTRYPOINT ["/usr/bin/pail"]
