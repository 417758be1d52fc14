# Multi-stage build: compile with the Rust toolchain, run from a small non-root image.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the benchmarks, so the manifest needs their files.
COPY benches ./benches
# hyper with weir's idle-buffer patch ([patch.crates-io] in Cargo.toml).
COPY vendor ./vendor
RUN cargo build --release --locked && strip target/release/weir

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home weir
COPY --from=build /src/target/release/weir /usr/local/bin/weir
COPY config/weir.toml /etc/weir/weir.toml
USER weir
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/weir"]
CMD ["serve", "--config", "/etc/weir/weir.toml"]
