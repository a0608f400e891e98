# syntax=docker/dockerfile:1
#
# timattr_exporter container image.
#
#   docker build -t timattr_exporter:0.1.0 \
#     --build-arg TIMATTR_REVISION="$(git rev-parse --short=12 HEAD)" .
#   docker run --rm -p 9877:9877 \
#     -v "$PWD/timattr.yml:/etc/timattr_exporter/timattr.yml:ro" \
#     -v "$PWD/secret_key:/run/secrets/tim/secret_key:ro" \
#     -v timattr-state:/var/lib/timattr_exporter \
#     timattr_exporter:0.1.0
#
# The config is mounted at /etc/timattr_exporter/timattr.yml (the default CMD reads it there),
# the SecretKey wherever the config's secret_key_file points, and the state_file's directory
# from a volume: the image's own filesystem can then be read-only. `--demo` needs none of it:
#   docker run --rm -p 9877:9877 timattr_exporter:0.1.0 --demo

# --- build -----------------------------------------------------------------------------------
# Debian 12 (bookworm), as the runtime image below: the binary links against the same glibc.
FROM rust:1-bookworm AS build
WORKDIR /src
# The whole context (.dockerignore keeps out target/ and .git): Cargo.toml may name benches,
# tests and examples, and the code may include_str! files outside src/.
COPY . .
# build.rs takes timattr_build_info's revision from TIMATTR_REVISION when .git is absent, as it
# is here: docker build --build-arg TIMATTR_REVISION="$(git rev-parse --short=12 HEAD)" .
ARG TIMATTR_REVISION=unknown
# --locked: build exactly the committed Cargo.lock, or fail.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin timattr_exporter \
 && install -D -m 0755 target/release/timattr_exporter /out/timattr_exporter \
 && install -d -m 0755 /out/state

# --- runtime ---------------------------------------------------------------------------------
# distroless "cc": glibc and libgcc for a Rust binary, plus the CA certificates
# (/etc/ssl/certs) without which every HTTPS request to Tencent's API fails; no shell, no
# package manager. The ":nonroot" variant's user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/timattr_exporter /usr/local/bin/timattr_exporter
# Where the example config puts state_file, writable by the runtime user.
COPY --from=build --chown=65532:65532 /out/state /var/lib/timattr_exporter
USER 65532:65532
EXPOSE 9877
ENTRYPOINT ["/usr/local/bin/timattr_exporter"]
CMD ["--config.file=/etc/timattr_exporter/timattr.yml"]
