# Two images from one build: the manager (static, no libvirt) and the node agent (cgo, with the
# libvirt client library and qemu-img). Build with --target manager or --target agent
# (`make docker-build`). The build commands are `make build`'s, with the same version stamp.
FROM golang:1.26-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libvirt-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY internal/ internal/
ARG VERSION=dev
ENV GOFLAGS=-buildvcs=false
RUN CGO_ENABLED=0 go build -ldflags "-X github.com/kubenova/kubenova/internal/version.Version=${VERSION}" -o /out/manager ./cmd/manager
RUN CGO_ENABLED=1 go build -ldflags "-X github.com/kubenova/kubenova/internal/version.Version=${VERSION}" -o /out/agent ./cmd/agent

# The manager is the image service too: it inspects images with qemu-img (format, backing and
# data files) before it makes them available.
FROM debian:12-slim AS manager
RUN apt-get update && apt-get install -y --no-install-recommends qemu-utils ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]

# The agent talks to the node's libvirtd over its socket (mounted from the host), makes qcow2
# overlays and snapshots with qemu-img in the node's storage root, and cloud-init drives with
# mkfs.vfat and mcopy; it needs the libvirt client library only.
FROM debian:12-slim AS agent
RUN apt-get update && apt-get install -y --no-install-recommends libvirt0 qemu-utils dosfstools mtools ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/agent /agent
# Root, for libvirtd's socket and the disks in the storage root; the DaemonSet drops every
# capability but DAC_OVERRIDE and FOWNER (config/agent/agent.yaml says why).
USER 0:0
ENTRYPOINT ["/agent"]
