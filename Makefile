# Sendense: see README.md. Every target that needs Debian packages runs `deps` first.
GO        ?= go
BIN       := bin/sendense
# What `sendense version` prints; without git, the binary falls back to the
# VCS revision go build stamps, else "dev".
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null)
LDFLAGS   := $(if $(VERSION),-X main.version=$(VERSION))
# Packages with concurrency run under the race detector.
RACE_RE   := /(bus|store|copier|nbd|agents)(/|$$)
GOFILES    = $(shell find . -name '*.go' -not -path './var/*' -not -path './bin/*')

.PHONY: all deps build lint test test-race bench bench-catalog bench-copy bench-restore bench-restore-depth bench-prune bench-verify bench-snapshot bench-scale demo clean

all: build

deps:
	@./scripts/deps.sh

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/sendense

lint:
	@bad=$$(gofmt -l $(GOFILES)); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

# The README's test command. Race-checked packages and the rest run separately
# so the slow cgo/simulator packages are not instrumented twice.
test: deps lint
	$(GO) test -count=1 -timeout 20m $$($(GO) list ./... | grep -Ev '$(RACE_RE)')
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -E '$(RACE_RE)')

bench: deps bench-catalog bench-copy bench-restore bench-restore-depth bench-prune bench-verify bench-snapshot bench-scale

# Catalog consumer: events/s committed and publish-to-commit latency vs a raw JetStream loop.
bench-catalog:
	$(GO) test ./agents/catalog -run '^$$' -bench 'BenchmarkCatalog' -benchtime 1x -timeout 30m -v

# Copier vs nbdcopy vs the local no-NBD limit (qemu-img convert + fsync) on a 4 GiB source,
# 5 rounds in rotating order, each run from the same page-cache state (sync, drop caches as
# root, source re-read); median (min-max), ratios and CPU-s/GB per process. Also the copier to
# a TCP+TLS-PSK target, with digests, and a 1% incremental. SENDENSE_BENCH_ROUNDS sets rounds.
bench-copy:
	$(GO) test ./copier -run '^$$' -bench 'BenchmarkCopyVsNbdcopy' -benchtime 1x -timeout 30m -v

# Restore of a 512 MiB backup (256 MiB data) over a unix socket and over TCP+TLS-PSK, as
# `sendense restore` does it (3 rounds; seconds each and the ratio TLS/unix).
bench-restore:
	$(GO) test ./agents/hub -run '^$$' -bench 'BenchmarkRestoreTLS' -benchtime 3x -timeout 10m -v

# Restore of the newest point of chains of depth 1, 10 and 100 (2 GiB disk, 1 GiB data) as
# `sendense restore` reads it, and `qemu-img convert` of the same chain in the same run.
bench-restore-depth:
	$(GO) test ./agents/hub -run '^$$' -bench 'BenchmarkRestoreDepth' -benchtime 2x -timeout 20m -v

# Prune (merge) of the first full under a 1 GiB incremental, and qemu-img commit -d of the same
# chain alone (seconds each and the ratio prune/commit).
bench-prune:
	$(GO) test ./repository -run '^$$' -bench 'BenchmarkPruneMerge' -benchtime 2x -timeout 20m -v

# Verify of a 1 GiB point (a chain of 2) as sendense.repo.verify does it, against qemu-img
# compare of the same chain with a raw copy, in the same iterations (ratio verify/compare).
bench-verify:
	$(GO) test ./agents/hub -run '^$$' -bench 'BenchmarkVerify' -benchtime 3x -timeout 20m -v

# Simulated vCenter: snapshot create + remove of a 1 GiB and a 16 GiB thin disk through the SDK
# (goal ≤ 50 ms per disk whatever its size), what the first guest write after a snapshot pays
# to split the live image from the frozen one, and the testbed's own freeze (link + extent walk).
bench-snapshot:
	$(GO) test ./testbed -run '^$$' -bench 'BenchmarkSnapshot|BenchmarkFreezeLink' -benchtime 10x -timeout 20m -v

# Scale, with serve (hub + catalog), vcenter-sim and 2 agents as separate processes: 100 VMs × 2
# disks backed up at once (wall time as `N.NNx ideal`, request→started and started→completed,
# the agent's own time per job, agents' peak RSS); then a catalog of 100k jobs (jobs, job, chain
# head, file size, catalog rebuild per 100k events). SENDENSE_BENCH_SCALE_INVENTORY and
# SENDENSE_BENCH_MAX_JOBS change the first; SENDENSE_BENCH_CATALOG_JOBS the second.
bench-scale: deps
	$(GO) test ./cmd/sendense -run '^$$' -bench 'BenchmarkScale' -benchtime 1x -timeout 40m -v

# The main job: embedded NATS, simulated vCenter with CBT, full + incremental + restore check.
demo: deps build
	./$(BIN) demo

clean:
	rm -rf bin var
