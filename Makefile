# Makefile for github.com/raftkit/rafthttp.
#
# Recipes are plain POSIX sh (make's default /bin/sh is dash here).
# The repository holds the root module plus, eventually, nested modules
# (compat/, examples/ ...), each with its own go.mod. Targets that must
# cover every module (test, test-short, lint, tidy-check) iterate over
# $(MODULES); the others only look at the root module.

GO ?= go

# Benchmark selection and repetition for `make bench`.
BENCH ?= .
COUNT ?= 1

# How long each fuzz target runs in `make fuzz`.
FUZZTIME ?= 20s

TESTFLAGS = -race -shuffle=on -count=1 -timeout 20m

# Shell fragment that prints the directory of every module, one per line:
# the root (".") first, then every nested go.mod below it, sorted.
# Hidden directories (.git, .ci ...), testdata and vendor directories are
# skipped. With no nested modules it prints just ".".
MODULES = { echo .; find . \( -name testdata -o -name vendor -o -name '.?*' \) -prune \
	-o -name go.mod ! -path ./go.mod -print | sed 's|/go.mod$$||' | LC_ALL=C sort; }

# $(call in_modules,CMD): run the shell command CMD in every module
# directory, printing a one-line header per module. All modules are
# visited; the recipe fails at the end if CMD failed in any of them.
in_modules = failed=; \
	for m in $$($(MODULES)); do \
		echo "==> $$m: $(1)"; \
		(cd "$$m" && $(1)) || failed="$$failed $$m"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED in:$$failed" >&2; exit 1; fi

.PHONY: test test-short bench bench-compat fuzz lint gofmt-check vet staticcheck cover demo tidy-check robustness

# Run every test, with the race detector and shuffled order, in every module.
test:
	@$(call in_modules,$(GO) test $(TESTFLAGS) ./...)

# Same as test but with -short, for quick local iteration (not used by CI).
test-short:
	@$(call in_modules,$(GO) test -short $(TESTFLAGS) ./...)

# Run benchmarks of the root module (e.g. make bench BENCH=Encode COUNT=5).
bench:
	$(GO) test -run='^$$' -bench=$(BENCH) -benchmem -count=$(COUNT) ./...

# Side-by-side benchmark of our transport and etcd 3.7's rafthttp.Transport
# in one process (compat/bench; results in compat/BENCHMARKS.md): MsgApp
# streams, heartbeats, snapshots, the pipeline, a 3-member raft cluster and
# 25 members on 600 links. About 5 minutes; pass flags with BENCHFLAGS, e.g.
# BENCHFLAGS=-quick, BENCHFLAGS='-only ours -cpuprofile /tmp/cpu.out' or,
# for the raft cluster alone, BENCHFLAGS='-scenarios raft'.
bench-compat:
	cd compat/bench && $(GO) run . $(BENCHFLAGS)

# Discover every fuzz target in every package of the root module and run
# each one alone for $(FUZZTIME); stop at the first failure.
fuzz:
	@set -e; \
	pkgs=$$($(GO) list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./...); \
	n=0; \
	for pkg in $$pkgs; do \
		list=$$($(GO) test -list '^Fuzz' "$$pkg"); \
		for t in $$(echo "$$list" | grep '^Fuzz' || true); do \
			echo "==> $$pkg $$t ($(FUZZTIME))"; \
			$(GO) test -run='^$$' -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) "$$pkg"; \
			n=$$((n + 1)); \
		done; \
	done; \
	echo "fuzz: $$n target(s) passed"

# All static checks: formatting, go vet and staticcheck, in every module.
lint: gofmt-check vet staticcheck

# Fail, listing them, if any .go file of the repository (all modules) is
# not gofmt-formatted. testdata, vendor and hidden directories are skipped.
gofmt-check:
	@echo "==> gofmt -l"; \
	files=$$(find . \( -name testdata -o -name vendor -o -name '.?*' \) -prune \
		-o -name '*.go' -type f -exec gofmt -l {} +) || exit 1; \
	if [ -n "$$files" ]; then echo "gofmt needed on:" >&2; echo "$$files" >&2; exit 1; fi

# go vet in every module.
vet:
	@$(call in_modules,$(GO) vet ./...)

# staticcheck, pinned to a version known to build with our Go toolchain.
STATICCHECK = $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
staticcheck:
	@$(call in_modules,$(STATICCHECK) ./...)

# Coverage of the root module; prints the total.
cover:
	$(GO) test -coverprofile=cover.out ./...
	$(GO) tool cover -func=cover.out | tail -1

# The runnable demo: a three-member raftkv cluster in one process and a
# scripted tour of it (examples/raftkv). Exits non-zero if a check fails.
demo:
	cd examples/raftkv && $(GO) run . demo

# Robustness (robustness/doc.go): seed after seed, a raft key-value store
# on our transports under a seeded nemesis (partitions, slow links, resets,
# stalled streams, restarts, snapshot installs), its history checked with
# porcupine, then a table of the totals. DURATION is how long to run (default
# 5m; with SEED and no DURATION, that seed alone is replayed), SEED the
# first seed (default: from the clock), MEMBERS the cluster sizes taken in
# turn, CHAOS how long each seed runs under faults. A failed seed writes its
# history (JSON and porcupine's HTML), fault schedule and report under OUT
# (default $TMPDIR/rafthttp-robustness) and prints how to replay it. More
# flags of the test binary go in ROBUSTFLAGS.
# Example: make robustness DURATION=30m; make robustness SEED=1234 MEMBERS=5
DURATION ?=
SEED ?= 0
MEMBERS ?= 3,5
CHAOS ?= 20s
OUT ?=
ROBUSTFLAGS ?=
robustness:
	cd robustness && $(GO) test -race -count=1 -timeout 0 -run '^TestRobustness$$' -args \
		-robust.duration=$(if $(DURATION),$(DURATION),$(if $(filter-out 0,$(SEED)),0,5m)) \
		-robust.seed=$(SEED) -robust.members=$(MEMBERS) -robust.chaos=$(CHAOS) \
		$(if $(OUT),-robust.out=$(OUT)) $(ROBUSTFLAGS)

# Fail if go.mod/go.sum of any module is not tidy (prints the diff; never
# modifies files).
tidy-check:
	@$(call in_modules,$(GO) mod tidy -diff)
