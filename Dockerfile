# Sendense: one image for every role (serve, hub, agent, vcenter-sim); curl for the
# compose healthchecks on /readyz.
FROM golang:1.26-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libnbd-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=
RUN go build -ldflags "${VERSION:+-X main.version=$VERSION}" -o /out/sendense ./cmd/sendense

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends qemu-utils nbdkit libnbd0 libnbd-bin ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/sendense /usr/local/bin/sendense
VOLUME /var/lib/sendense
ENTRYPOINT ["sendense", "--data", "/var/lib/sendense", "--log-format", "json"]
