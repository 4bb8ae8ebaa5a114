#!/usr/bin/env bash
# Makes the Pulumi engine available in ~/.pulumi (or $PULUMI_HOME), where the official installer puts it:
#   - the Pulumi CLI: an existing `pulumi` is used as it is; otherwise it is built from the Go
#     module proxy (go >= 1.26);
#   - the Kubernetes provider plugin, at the version the Python SDK in requirements.txt asks for:
#     downloaded by `pulumi plugin install` where that works, otherwise built from the Go module proxy;
#   - this project's own provider plugin, consul-keys (provider/: the stack's key material), built
#     with Go from the source in this repository and installed at the version the program asks for
#     (PROVIDER_VERSION in consul/generated.py). It is rebuilt only when its source changes.
# Builds are cached in ~/.cache/consul-pulumi-engine and never repeated once their output exists.
set -euo pipefail

PULUMI_VERSION=3.274.1
# The Kubernetes provider: keep K8S_PROVIDER_VERSION equal to pulumi-kubernetes in requirements.txt.
K8S_PROVIDER_VERSION=4.25.0
K8S_PROVIDER_MODULE=github.com/pulumi/pulumi-kubernetes/provider/v4
K8S_PROVIDER_PSEUDO=v4.0.0-20260115033456-f47bc2d6f199
K8S_SDK_GO_VERSION=v4.24.0
MIN_GO_MINOR=26

# The pulumi CLI's own home, as it decides it: $PULUMI_HOME, else the account's home from the user
# database (not $HOME, which the CLI ignores), so the binaries land beside the plugins it installs.
account_home=$(getent passwd "$(id -u)" | cut -d: -f6) || true
PULUMI_ROOT=${PULUMI_HOME:-${account_home:-$HOME}/.pulumi}
BIN_DIR=$PULUMI_ROOT/bin
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/consul-pulumi-engine
export PATH="$BIN_DIR:$PATH"
export PULUMI_SKIP_UPDATE_CHECK=true

say() { echo "install-engine: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

require_go() {
  local why=$1
  if ! command -v go >/dev/null 2>&1; then
    die "$why, and there is no Go to build it with. Install Pulumi (https://www.pulumi.com/docs/iac/download-install/) or Go >= 1.$MIN_GO_MINOR (https://go.dev/dl/), then run this again."
  fi
  local minor
  minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
  if [ "${minor:-0}" -lt "$MIN_GO_MINOR" ]; then
    die "$why, and $(go env GOVERSION) is too old to build it. Install Pulumi (https://www.pulumi.com/docs/iac/download-install/) or Go >= 1.$MIN_GO_MINOR."
  fi
}

# run STEP LOG COMMAND...: one build step, its output in LOG, a clear message when it fails.
run() {
  local step=$1 log=$2
  shift 2
  say "$step (log: $log)"
  local start=$SECONDS
  # A heartbeat with the elapsed time and the packages compiled so far (go build -v names each one).
  ( while sleep 60; do say "  ... $step: $((SECONDS - start)) s, $(grep -c '^[a-z]' "$log" 2>/dev/null || echo 0) log lines"; done ) &
  local heartbeat=$!
  if ! "$@" >>"$log" 2>&1; then
    kill "$heartbeat" 2>/dev/null || true
    tail -n 20 "$log" >&2
    die "$step failed; the full log is $log"
  fi
  kill "$heartbeat" 2>/dev/null || true
  say "$step: done in $((SECONDS - start)) s"
}

build_cli() {
  require_go "no pulumi CLI was found"
  local dir=$CACHE/cli-v$PULUMI_VERSION log=$CACHE/cli-v$PULUMI_VERSION/build.log
  mkdir -p "$dir" "$BIN_DIR"
  : >"$log"
  # pkg/v3's go.mod replaces sdk/v3 with a relative path, so `go install pkg@version` refuses it:
  # a small wrapper module requires both at the same version and repeats the non-local replaces.
  cat >"$dir/go.mod" <<EOF
module consul-engine-build/cli

go 1.$MIN_GO_MINOR

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e

replace golang.org/x/text => golang.org/x/text v0.41.0
EOF
  (cd "$dir" && run "Pulumi CLI v$PULUMI_VERSION: fetching modules" "$log" \
    go get "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@v$PULUMI_VERSION" "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION")
  (cd "$dir" && CGO_ENABLED=0 run "Pulumi CLI v$PULUMI_VERSION: compiling (several minutes on 2 cores)" "$log" \
    go build -v -trimpath -tags osusergo,grpcnotrace \
    -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION" \
    -o "$dir/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
  install -m 0755 "$dir/pulumi" "$BIN_DIR/pulumi"
}

# plugin_installed NAME VERSION: whether the resource plugin NAME is installed at VERSION.
plugin_installed() {
  pulumi plugin ls --json 2>/dev/null | python3 -c '
import json, sys
plugins = json.load(sys.stdin) or []
sys.exit(0 if any(p["name"] == sys.argv[1] and p["kind"] == "resource" and p["version"] == sys.argv[2] for p in plugins) else 1)
' "$1" "$2"
}

# The source directory of a module, fetched from the Go module proxy; a failed fetch (the proxy
# answers an error now and then) is tried again twice, and each error is printed.
module_dir() {
  local attempt answer
  for attempt in 1 2 3; do
    answer=$(go mod download -json "$1") || true
    # Its JSON names the directory once fetched, and carries "Error" instead when the fetch failed.
    printf '%s' "$answer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])' 2>/dev/null && return 0
    say "fetching $1 (attempt $attempt of 3): ${answer:-no answer}"
    sleep 10
  done
  return 1
}

kubernetes_plugin_installed() { plugin_installed kubernetes "$K8S_PROVIDER_VERSION"; }

build_kubernetes_provider() {
  require_go "the Kubernetes provider plugin $K8S_PROVIDER_VERSION could not be downloaded"
  local dir=$CACHE/kubernetes-$K8S_PROVIDER_VERSION log=$CACHE/kubernetes-$K8S_PROVIDER_VERSION/build.log
  local binary=$dir/pulumi-resource-kubernetes
  mkdir -p "$dir"
  : >"$log"
  if [ ! -x "$binary" ]; then
    local source
    source=$(module_dir "$K8S_PROVIDER_MODULE@$K8S_PROVIDER_PSEUDO") \
      || die "fetching $K8S_PROVIDER_MODULE@$K8S_PROVIDER_PSEUDO from the Go module proxy failed three times"
    rm -rf "$dir/src"
    cp -r "$source" "$dir/src"
    chmod -R u+w "$dir/src"
    # The provider's go.mod points its SDK at ../sdk, which the module does not contain.
    (cd "$dir/src" && go mod edit -dropreplace github.com/pulumi/pulumi-kubernetes/sdk/v4)
    (cd "$dir/src" && run "Kubernetes provider: fetching modules" "$log" go get "github.com/pulumi/pulumi-kubernetes/sdk/v4@$K8S_SDK_GO_VERSION")
    # main.go embeds schema-embed.json, an output of the provider's `go generate` step.
    (cd "$dir/src/cmd/pulumi-resource-kubernetes" && VERSION=$K8S_PROVIDER_VERSION run "Kubernetes provider: generating the embedded schema" "$log" go run ./generate.go)
    (cd "$dir/src" && CGO_ENABLED=0 run "Kubernetes provider $K8S_PROVIDER_VERSION: compiling (10 minutes or more on 2 cores)" "$log" \
      go build -v -trimpath -ldflags "-X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$K8S_PROVIDER_VERSION" \
      -o "$binary.tmp" ./cmd/pulumi-resource-kubernetes)
    mv "$binary.tmp" "$binary"
  fi
  run "Kubernetes provider: registering the plugin" "$log" \
    pulumi plugin install resource kubernetes "$K8S_PROVIDER_VERSION" --file "$binary"
}

# The consul-keys plugin: built from provider/ into a cache directory named after a digest of its
# source, and (re)installed whenever the installed build is not that one.
install_key_provider() {
  local repo version digest dir binary stamp=$CACHE/consul-keys.installed
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  version=$(sed -n 's/^PROVIDER_VERSION = "\(.*\)"$/\1/p' "$repo/consul/generated.py")
  [ -n "$version" ] || die "no PROVIDER_VERSION in consul/generated.py"
  digest=$(cd "$repo/provider" && cat go.mod go.sum $(ls ./*.go | grep -v _test.go) | sha256sum | cut -c1-16)
  dir=$CACHE/consul-keys-$digest
  binary=$dir/pulumi-resource-consul-keys
  if [ -x "$binary" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version $digest" ] && plugin_installed consul-keys "$version"; then
    say "consul-keys provider $version is installed"
    return
  fi
  if [ ! -x "$binary" ]; then
    require_go "the consul-keys provider (provider/) is not built"
    mkdir -p "$dir"
    : >"$dir/build.log"
    # The same flags as the CLI build above, so the Go build cache serves the SDK packages they share.
    (cd "$repo/provider" && CGO_ENABLED=0 run "consul-keys provider $version: compiling (a minute or two; more without the CLI build's cache)" "$dir/build.log" \
      go build -v -trimpath -tags osusergo,grpcnotrace -ldflags "-X main.version=$version" -o "$binary.tmp" .)
    mv "$binary.tmp" "$binary"
  fi
  run "consul-keys provider: registering the plugin" "$dir/build.log" \
    pulumi plugin install resource consul-keys "$version" --file "$binary" --reinstall
  echo "$version $digest" >"$stamp"
}

mkdir -p "$CACHE"
if ! command -v pulumi >/dev/null 2>&1 || ! kubernetes_plugin_installed; then
  say "the engine is not installed: building what is missing from the Go module proxy, once (about 31 minutes on 2 busy cores; later runs reuse it)"
fi
if command -v pulumi >/dev/null 2>&1; then
  say "using $(command -v pulumi) ($(pulumi version))"
else
  build_cli
fi

if kubernetes_plugin_installed; then
  say "Kubernetes provider plugin $K8S_PROVIDER_VERSION is installed"
else
  say "installing the Kubernetes provider plugin $K8S_PROVIDER_VERSION"
  if ! timeout 120 pulumi plugin install resource kubernetes "$K8S_PROVIDER_VERSION" >"$CACHE/plugin-download.log" 2>&1; then
    say "no download (see $CACHE/plugin-download.log): building it from the Go module proxy"
    build_kubernetes_provider
  fi
  kubernetes_plugin_installed || die "the Kubernetes provider plugin $K8S_PROVIDER_VERSION is still not installed"
fi

install_key_provider
say "ready: $(command -v pulumi) $(pulumi version), kubernetes $K8S_PROVIDER_VERSION, consul-keys"
