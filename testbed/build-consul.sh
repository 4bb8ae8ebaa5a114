#!/usr/bin/env bash
# Builds Consul v1.16.1 (the newest MPL-2.0 release) from the Go module proxy, once:
# the binary is cached in ~/.cache/consul-testbed/consul-1.16.1/ and never rebuilt.
# Later releases (1.16.2+, 1.17+) are under the Business Source License: do not raise this version.
set -euo pipefail
VERSION=1.16.1
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/consul-testbed
DIR=$CACHE/consul-$VERSION
BIN=$DIR/consul
say() { echo "build-consul: $*" >&2; }

if [ -x "$BIN" ]; then
  say "cached: $BIN ($("$BIN" version | head -1))"
  exit 0
fi
command -v go >/dev/null || { say "ERROR: Go is needed to build Consul"; exit 1; }
mkdir -p "$DIR"
LOG=$DIR/build.log
: >"$LOG"
say "building Consul v$VERSION once (about 10 minutes on 2 cores; log: $LOG)"
start=$SECONDS
# A wrapper module: it pins Consul's own sub-modules at the versions its go.mod names, and repeats
# Consul's exclude of go-msgpack 1.1.5/1.1.6, which a wrapper does not inherit.
cat >"$DIR/go.mod" <<MOD
module consul-testbed/consul

go 1.26

require (
	github.com/hashicorp/consul v$VERSION
	github.com/hashicorp/consul/api v1.24.0
	github.com/hashicorp/consul/envoyextensions v0.4.1
	github.com/hashicorp/consul/proto-public v0.4.1
	github.com/hashicorp/consul/sdk v0.14.1
	github.com/hashicorp/consul/troubleshoot v0.3.1
)

exclude (
	github.com/hashicorp/go-msgpack v1.1.5
	github.com/hashicorp/go-msgpack v1.1.6
)
MOD
cat >"$DIR/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/hashicorp/consul"
GO
# These modules are served by the proxy but are missing from the checksum database here.
export GONOSUMDB=github.com/hashicorp/hcp-sdk-go,github.com/hashicorp/consul/envoyextensions
heartbeat() { while sleep 60; do say "... still building, $((SECONDS - start)) s"; done; }
heartbeat & hb=$!
trap 'kill $hb 2>/dev/null || true' EXIT
(cd "$DIR" && go mod tidy >>"$LOG" 2>&1 && go mod download >>"$LOG" 2>&1) || { tail -20 "$LOG" >&2; say "ERROR: fetching modules failed; see $LOG"; exit 1; }
say "modules fetched in $((SECONDS - start)) s; compiling"
(cd "$DIR" && CGO_ENABLED=0 go build -trimpath \
  -ldflags "-X github.com/hashicorp/consul/version.GitCommit=v$VERSION -X github.com/hashicorp/consul/version.Version=$VERSION -X github.com/hashicorp/consul/version.VersionPrerelease=" \
  -o "$BIN.tmp" github.com/hashicorp/consul >>"$LOG" 2>&1) || { tail -20 "$LOG" >&2; say "ERROR: compiling failed; see $LOG"; exit 1; }
mv "$BIN.tmp" "$BIN"
say "built in $((SECONDS - start)) s: $("$BIN" version | head -1)"
