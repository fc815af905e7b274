# zkq binaries on a slim Debian image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p zkq-producer -p zkq-worker

FROM debian:bookworm-slim
COPY --from=build /src/target/release/zkq-producer /src/target/release/zkq-worker /usr/local/bin/
ENTRYPOINT ["zkq-worker"]
