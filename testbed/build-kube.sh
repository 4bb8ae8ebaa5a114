#!/usr/bin/env bash
# Builds the control-plane test bed's binary once, from the Go module proxy:
# one multi-call program `kube-testbed` with the sub-commands etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok, and the node agents kubelet and kube-proxy. One module graph means every shared
# package (client-go, apiserver, etcd client...) is compiled once, not five times.
#   - Kubernetes v1.36.1 (k8s.io/kubernetes): its go.mod replaces the k8s.io/* staging modules
#     with local paths, so the wrapper replaces each with its published v0.36.1, a list generated
#     from that real go.mod, never copied by hand;
#   - etcd v3.6 embedded (go.etcd.io/etcd/server/v3 at the version Kubernetes' go.mod names);
#   - kwok v0.8.0 (sigs.k8s.io/kwok), which is built against the same k8s.io v0.36.1 modules.
# The binary is cached in ~/.cache/consul-testbed/kube-<version>-r<recipe>/ and never rebuilt.
set -euo pipefail
K8S_VERSION=v1.36.1
KWOK_VERSION=v0.8.0
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/consul-testbed
# Bump RECIPE when main.go below changes, so a cached binary of an older recipe is not reused.
RECIPE=4
DIR=$CACHE/kube-$K8S_VERSION-r$RECIPE
BIN=$DIR/kube-testbed
say() { echo "build-kube: $*" >&2; }

if [ -x "$BIN" ]; then
  say "cached: $BIN"
  exit 0
fi
command -v go >/dev/null || { say "ERROR: Go is needed to build the control plane"; exit 1; }
mkdir -p "$DIR"
LOG=$DIR/build.log
: >"$LOG"
start=$SECONDS
say "building etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy $K8S_VERSION and kwok $KWOK_VERSION once (about 25 minutes on 2 cores; log: $LOG)"
k8s_gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
staging=${K8S_VERSION/v1./v0.}
{
  echo "module consul-testbed/kube"
  echo
  echo "go 1.26"
  echo
  echo "require ("
  echo "	k8s.io/kubernetes $K8S_VERSION"
  echo "	sigs.k8s.io/kwok $KWOK_VERSION"
  echo ")"
  echo
  # Every `k8s.io/x => ./staging/src/k8s.io/x` of Kubernetes' own go.mod, pointed at the published module.
  go mod edit -json "$k8s_gomod" | python3 -c '
import json, sys
staging = sys.argv[1]
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/"):
        path = r["Old"]["Path"]
        print("replace", path, "=>", path, staging)
' "$staging"
} >"$DIR/go.mod"
say "$(grep -c '^replace' "$DIR/go.mod") staging modules replaced with their $staging releases"
cat >"$DIR/main.go" <<'GO'
// kube-testbed runs one of the control plane's programs, named by its first argument.
package main

import (
	"context"
	"fmt"
	"os"
	_ "time/tzdata"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kubeproxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
	kubectl "k8s.io/kubectl/pkg/cmd"
	"sigs.k8s.io/kwok/pkg/config"
	kwokcmd "sigs.k8s.io/kwok/pkg/kwok/cmd"
	"sigs.k8s.io/kwok/pkg/log"
	"sigs.k8s.io/kwok/pkg/utils/signals"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kube-testbed etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kwok|kubelet|kube-proxy [flags]")
		os.Exit(2)
	}
	name := os.Args[1]
	os.Args = os.Args[1:]
	switch name {
	case "etcd":
		etcdmain.Main(os.Args)
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubectl":
		os.Exit(cli.Run(kubectl.NewDefaultKubectlCommand()))
	case "kwok":
		os.Exit(runKwok())
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "kube-proxy":
		os.Exit(cli.Run(kubeproxy.NewProxyCommand()))
	default:
		fmt.Fprintf(os.Stderr, "kube-testbed: unknown program %q\n", name)
		os.Exit(2)
	}
}

// runKwok is kwok's own main (sigs.k8s.io/kwok/cmd/kwok). Kubernetes' packages register a
// --version flag of their own on pflag.CommandLine, which cobra would merge into kwok's command.
func runKwok() int {
	pflag.CommandLine = pflag.NewFlagSet(os.Args[0], pflag.ExitOnError)
	flagset := pflag.NewFlagSet("global", pflag.ContinueOnError)
	flagset.ParseErrorsAllowlist.UnknownFlags = true
	flagset.Usage = func() {}
	ctx := signals.SetupSignalContext()
	ctx, logger := log.InitFlags(ctx, flagset)
	ctx, err := config.InitFlags(ctx, flagset)
	if err != nil {
		logger.Error("Init config flags", "err", err)
		return 1
	}
	command := kwokcmd.NewCommand(ctx)
	command.PersistentFlags().AddFlagSet(flagset)
	if err := command.ExecuteContext(ctx); err != nil {
		logger.Error("Execute exit", "err", err)
		return 1
	}
	return 0
}
GO
heartbeat() { while sleep 60; do say "... still building, $((SECONDS - start)) s"; done; }
heartbeat & hb=$!
trap 'kill $hb 2>/dev/null || true' EXIT
(cd "$DIR" && go get "go.etcd.io/etcd/server/v3@$(go mod edit -json "$k8s_gomod" | python3 -c 'import json,sys; print(next(r["Version"] for r in json.load(sys.stdin)["Require"] if r["Path"]=="go.etcd.io/etcd/server/v3"))')" >>"$LOG" 2>&1 \
  && go mod tidy >>"$LOG" 2>&1) || { tail -20 "$LOG" >&2; say "ERROR: resolving modules failed; see $LOG"; exit 1; }
say "modules resolved in $((SECONDS - start)) s; compiling"
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(cd "$DIR" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN.tmp" . >>"$LOG" 2>&1) \
  || { tail -30 "$LOG" >&2; say "ERROR: compiling failed; see $LOG"; exit 1; }
mv "$BIN.tmp" "$BIN"
say "built in $((SECONDS - start)) s: $BIN"
