# zkq binaries on a slim Debian image, run as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p zkq-producer -p zkq-worker -p zkq-admin

FROM debian:bookworm-slim
COPY --from=build /src/target/release/zkq-producer /src/target/release/zkq-worker \
    /src/target/release/zkq-admin /usr/local/bin/
# Command jobs run as this user: never root. Its home is its temp dir's parent only.
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin zkq
USER zkq:zkq
ENTRYPOINT ["zkq-worker"]
