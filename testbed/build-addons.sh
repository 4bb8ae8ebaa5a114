#!/usr/bin/env bash
# Builds the cluster add-ons that run as real pods in the kubelet test bed, once, from the Go module proxy:
#   - coredns: CoreDNS v1.15.0 with only the plugins a cluster DNS needs, the documented way for a custom
#     plugin set (a main package that imports each plugin and sets dnsserver's directives, in CoreDNS's
#     own order from its plugin.cfg, then runs coremain);
#   - kube-router: github.com/cloudnativelabs/kube-router/v2 v2.1.0 (the newest the proxy serves), run with
#     only its NetworkPolicy controller (iptables and ipset). kube-network-policies, the agent kind uses,
#     needs nftables' `queue` expression, which these machines' kernels lack (CONFIG_NFT_QUEUE is not set):
#     its table is refused and it enforces nothing.
# Each has its own wrapper module, since they pin different k8s.io releases (CoreDNS v0.37.1,
# kube-router v0.29.2) that one module graph would force to a single version.
# Both are static binaries, cached in ~/.cache/consul-testbed/addons-r<recipe>/ and never rebuilt.
set -euo pipefail
COREDNS_VERSION=v1.15.0
NETPOL_VERSION=v2.1.0
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/consul-testbed
# Bump RECIPE when a wrapper module below changes, so cached binaries of an older recipe are not reused.
RECIPE=1
DIR=$CACHE/addons-r$RECIPE
COREDNS_BIN=$DIR/coredns
NETPOL_BIN=$DIR/kube-router
# CoreDNS's plugins for a cluster DNS, in the order of CoreDNS's plugin.cfg (core/dnsserver/zdirectives.go):
# that order, not the Corefile's, is the order a query goes through them. `coredns -plugins` also lists debug,
# dnstap, metadata, prometheus and transfer: packages these import register them, but a Corefile naming
# them is refused (unknown directive), as they are not in the list.
COREDNS_PLUGINS=(reload ready health errors log loadbalance rewrite cache template hosts kubernetes loop forward)
say() { echo "build-addons: $*" >&2; }

if [ -x "$COREDNS_BIN" ] && [ -x "$NETPOL_BIN" ]; then
  say "cached: $COREDNS_BIN $NETPOL_BIN"
  echo "$COREDNS_BIN"
  echo "$NETPOL_BIN"
  exit 0
fi
command -v go >/dev/null || { say "ERROR: Go is needed to build the cluster add-ons"; exit 1; }
mkdir -p "$DIR"
LOG=$DIR/build.log
: >"$LOG"
start=$SECONDS
say "building CoreDNS $COREDNS_VERSION and kube-router $NETPOL_VERSION once (about 7 minutes on 2 busy cores; log: $LOG)"
heartbeat() { while sleep 60; do say "... still building, $((SECONDS - start)) s"; done; }
heartbeat & hb=$!
trap 'kill $hb 2>/dev/null || true' EXIT

# build NAME MODDIR PACKAGE BIN [go build flags...]: resolves the wrapper module's graph, then compiles PACKAGE to BIN.
build() {
  local name=$1 moddir=$2 pkg=$3 bin=$4
  shift 4
  say "$name: resolving modules"
  (cd "$moddir" && go mod tidy >>"$LOG" 2>&1 && go mod download >>"$LOG" 2>&1) \
    || { tail -20 "$LOG" >&2; say "ERROR: $name: fetching modules failed; see $LOG"; exit 1; }
  say "$name: modules resolved at $((SECONDS - start)) s; compiling"
  (cd "$moddir" && CGO_ENABLED=0 go build -trimpath "$@" -o "$bin.tmp" "$pkg" >>"$LOG" 2>&1) \
    || { tail -30 "$LOG" >&2; say "ERROR: $name: compiling failed; see $LOG"; exit 1; }
  mv "$bin.tmp" "$bin"
  say "$name: built at $((SECONDS - start)) s: $bin"
}

if [ ! -x "$COREDNS_BIN" ]; then
  mod=$DIR/mod-coredns
  mkdir -p "$mod"
  cat >"$mod/go.mod" <<MOD
module consul-testbed/coredns

go 1.26

require github.com/coredns/coredns $COREDNS_VERSION
MOD
  {
    echo "// coredns is CoreDNS with only the plugins a cluster DNS needs."
    echo "package main"
    echo
    echo "import ("
    echo '	"github.com/coredns/coredns/core/dnsserver"'
    echo '	"github.com/coredns/coredns/coremain"'
    echo
    # gofmt's order for imports; the execution order is the directives list below.
    for p in $(printf '%s\n' "${COREDNS_PLUGINS[@]}" | LC_ALL=C sort); do
      echo "	_ \"github.com/coredns/coredns/plugin/$p\""
    done
    echo ")"
    echo
    echo "// directives is CoreDNS's own execution order (plugin.cfg), cut down to the plugins imported above."
    echo "var directives = []string{"
    for p in "${COREDNS_PLUGINS[@]}"; do
      echo "	\"$p\","
    done
    echo "}"
    echo
    echo "func init() {"
    echo "	if err := dnsserver.SetDirectives(directives); err != nil {"
    echo "		panic(err)"
    echo "	}"
    echo "}"
    echo
    echo "func main() {"
    echo "	coremain.Run()"
    echo "}"
  } >"$mod/main.go"
  # The flags of CoreDNS's Makefile: stripped, the grpcnotrace tag, the version in coremain.GitCommit.
  build coredns "$mod" . "$COREDNS_BIN" -tags grpcnotrace \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
fi

if [ ! -x "$NETPOL_BIN" ]; then
  mod=$DIR/mod-kube-router
  mkdir -p "$mod"
  cat >"$mod/go.mod" <<MOD
module consul-testbed/kube-router

go 1.26

require github.com/cloudnativelabs/kube-router/v2 $NETPOL_VERSION
MOD
  cat >"$mod/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
GO
  # kube-router's Makefile: CGO_ENABLED=0, the version in pkg/version.
  build kube-router "$mod" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router "$NETPOL_BIN" \
    -ldflags "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$NETPOL_VERSION"
fi

say "built in $((SECONDS - start)) s"
echo "$COREDNS_BIN"
echo "$NETPOL_BIN"
