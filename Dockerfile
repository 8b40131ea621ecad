# The producer, the sink and the window publisher, from one build. Targets (docker compose builds
# all three):
#   producer   clickstream-producer, /metrics and /health on 9101
#   sink       clickstream-sink, /metrics, /health and /ready on 9100
#   windows    clickstream-windows, /metrics and /health on 9102
#
#   docker build --target sink -t clickstream-sink .
#
# Stages: `skeleton` reduces the workspace to its manifests and lockfile (deploy/cargo-skeleton.sh),
# `build` compiles the dependencies from that skeleton (a layer docker keeps until a manifest or
# Cargo.lock changes) and then the real code, `runtime` is a slim Debian with only the
# binaries, a non-root user and the health probe `http-ok PORT PATH` (docker-compose.yml's
# health checks use it). The toolchain is the one rust-toolchain.toml pins, and the build uses
# the lockfile as CI does (--locked); the deploy tests check both.

# --- build ------------------------------------------------------------------------------------
FROM rust:1.95.0-slim-bookworm AS toolchain
# librdkafka is compiled from source by rdkafka-sys (make, a C/C++ compiler), with TLS from the
# system OpenSSL (pkg-config, libssl-dev) and zlib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

FROM toolchain AS skeleton
COPY . /context
RUN /context/deploy/cargo-skeleton.sh /context /skeleton

FROM toolchain AS build
# Dependencies only: cached until a manifest or the lockfile changes.
COPY --from=skeleton /skeleton/ ./
RUN cargo build --release --locked -p clickstream-producer -p clickstream-sink -p clickstream-windows
# The real code. Copied files keep their old mtimes, which cargo would take for "unchanged
# since the stub build": touch them so the workspace's crates are compiled for real.
COPY . .
RUN find . -name '*.rs' -not -path './target/*' -exec touch {} + \
    && cargo build --release --locked -p clickstream-producer -p clickstream-sink -p clickstream-windows

# --- run --------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# The binaries link OpenSSL (libssl3: TLS to Kafka or ClickHouse, with ca-certificates); what
# else they link (glibc, libgcc, zlib) is in the base image. The deploy tests check this list
# against the libraries the binaries need.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin clickstream
COPY deploy/http-ok /usr/local/bin/http-ok
COPY --from=build /src/target/release/clickstream-producer /src/target/release/clickstream-sink /src/target/release/clickstream-windows /usr/local/bin/
USER clickstream

FROM runtime AS producer
ENV CLICKSTREAM_PRODUCER_METRICS_ADDR=0.0.0.0:9101
EXPOSE 9101
ENTRYPOINT ["clickstream-producer"]

FROM runtime AS sink
ENV CLICKSTREAM_SINK_HTTP_ADDR=0.0.0.0:9100
EXPOSE 9100
# On SIGTERM the sink stops consuming, flushes and commits (within shutdown_timeout_ms).
STOPSIGNAL SIGTERM
ENTRYPOINT ["clickstream-sink"]

FROM runtime AS windows
ENV CLICKSTREAM_WINDOWS_HTTP_ADDR=0.0.0.0:9102
EXPOSE 9102
# On SIGTERM it finishes the check under way and flushes the producer.
STOPSIGNAL SIGTERM
ENTRYPOINT ["clickstream-windows"]
