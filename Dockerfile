# One image for every subcommand: `fanout operator|dispatch|gateway|standalone|...`.
#   docker build -t fanout .
#   docker run --rm fanout --help
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# The lock file pins every dependency; the cache mounts keep rebuilds incremental.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fanout \
    && install -m 0755 target/release/fanout /usr/local/bin/fanout

# glibc and libgcc, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/fanout /usr/local/bin/fanout
# distroless' "nonroot" user; Kubernetes can check it with runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/fanout"]
CMD ["--help"]
