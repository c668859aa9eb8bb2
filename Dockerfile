# The `amba` binary is the one image for every service (`amba serve <service>`).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p amba

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/amba /usr/local/bin/amba
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/amba"]
