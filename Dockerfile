# Multi-stage build of the dishflow binary.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake perl make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/dishflow

FROM debian:bookworm-slim
# curl: the healthcheck of docker-compose.yml asks /healthz.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/dishflow /usr/local/bin/dishflow
USER nobody
# --metrics-addr (docker-compose.yml uses 9464); the cluster port of --hostfile (2101).
EXPOSE 9464 2101
ENTRYPOINT ["dishflow"]
