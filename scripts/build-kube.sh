#!/usr/bin/env bash
# Builds the real Kubernetes binaries the lab needs from the Go module proxy and
# caches them, keyed by the Kubernetes pin, under
#     /var/cache/rto-harness/kube/<pin>/bin/
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl (k8s.io/kubernetes),
# etcd (go.etcd.io/etcd/server/v3), containerd, containerd-shim-runc-v2, ctr
# (github.com/containerd/containerd/v2), and pause, the pod sandbox program of the
# project's own (cluster/lab/kube/pause/main.go), static; and crdgen
# (cluster/lab/kube/crdgen/main.go, built against kubevirt.io/kubevirt), whose
# output, KubeVirt's own VirtualMachine, VirtualMachineInstance and
# VirtualMachineInstanceMigration CRDs, is written to <pin>/kubevirt-crds.yaml.
#
# Nothing is downloaded but Go modules. Each component is built from a small
# wrapper module generated under <pin>/src/<component>: the published go.mod files
# of k8s.io/kubernetes and go.etcd.io/etcd/server/v3 carry relative replaces that
# `go install pkg@version` refuses; a wrapper module ignores a dependency's
# replaces and, for Kubernetes, replaces every staging module with its published
# v0.X version (the list is read from the cached k8s.io/kubernetes@vX.mod). For
# KubeVirt it copies kubevirt.io/kubevirt's own replace block (its k8s.io/* pins,
# since it requires k8s.io/client-go v12.0.0+incompatible and relies on a replace)
# with the staging modules kubevirt.io/api and kubevirt.io/client-go turned into
# their published versions of the same tag.
#
# Idempotent: a binary is rebuilt only when it is missing or its stamp (component
# version, Go version, recipe) differs; a run with everything present only checks
# (runs each binary's --version). Timings of each build go to <pin>/build-times.tsv.
#
# Usage: scripts/build-kube.sh [--check] [component ...]
#   components: kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl
#               etcd containerd containerd-shim-runc-v2 ctr pause crdgen   (default: all)
#   --check     only check; exit 1 if anything is missing or stale.
# Environment: KUBE_VERSION (default v1.34.4), ETCD_VERSION, CONTAINERD_VERSION,
#   KUBEVIRT_VERSION, RTO_KUBE_CACHE (default /var/cache/rto-harness/kube), GO (default go).
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.34.4}
# etcd 3.6 is what Kubernetes 1.34 is released with; containerd 2.2 supports 1.34.
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.2.9}
# KubeVirt 1.8 is built against the Kubernetes 1.34 libraries (k8s.io/* v0.34.2
# in its go.mod; 1.7 is on v0.33); v1.8.4 is the newest 1.8 patch the proxy serves.
KUBEVIRT_VERSION=${KUBEVIRT_VERSION:-v1.8.4}
CACHE_ROOT=${RTO_KUBE_CACHE:-/var/cache/rto-harness/kube}
# Go is preinstalled at /usr/local/go on these machines, which a root shell's
# PATH (CI, cron) may not include.
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
# The go command puts its module and build caches under $HOME.
export HOME=${HOME:-/root}
# Bump when the way a binary is built changes (flags, tags, wrapper layout).
RECIPE=1

PIN_DIR="$CACHE_ROOT/$KUBE_VERSION"
BIN="$PIN_DIR/bin"
SRC="$PIN_DIR/src"
TIMES="$PIN_DIR/build-times.tsv"

KUBE_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
CTRD_BINS=(containerd containerd-shim-runc-v2 ctr)
ALL_BINS=(etcd "${KUBE_BINS[@]}" "${CTRD_BINS[@]}" pause crdgen)
PAUSE_SRC="$(cd "$(dirname "$0")/.." && pwd)/cluster/lab/kube/pause/main.go"
CRDGEN_SRC="$(cd "$(dirname "$0")/.." && pwd)/cluster/lab/kube/crdgen/main.go"
CRDS="$PIN_DIR/kubevirt-crds.yaml"

log() { printf '%s build-kube: %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'build-kube: %s\n' "$*" >&2; exit 1; }

CHECK_ONLY=0
WANT=()
for a in "$@"; do
    case "$a" in
        --check) CHECK_ONLY=1 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) printf '%s\n' "${ALL_BINS[@]}" | grep -qx -- "$a" || die "unknown component $a"
           WANT+=("$a") ;;
    esac
done
[ ${#WANT[@]} -gt 0 ] || WANT=("${ALL_BINS[@]}")

[ "$(id -u)" -eq 0 ] || die "run as root (the cache lives under /var/cache)"
command -v "$GO" >/dev/null || die "no Go toolchain ('$GO' not found)"
GO_VERSION=$("$GO" env GOVERSION)

# Go settings: module cache and build cache stay at their defaults
# (GOMODCACHE=/root/go/pkg/mod, GOCACHE=/root/.cache/go-build).
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local
# The builds share 2 cores with timing-sensitive tests: lowest CPU and IO priority.
NICE=(nice -n 19)
command -v ionice >/dev/null && NICE+=(ionice -c3)

version_of() {   # component -> module version it is built from
    case "$1" in
        etcd) echo "$ETCD_VERSION" ;;
        containerd|containerd-shim-runc-v2|ctr) echo "$CONTAINERD_VERSION" ;;
        pause) echo "src-$(sha256sum "$PAUSE_SRC" | cut -c1-12)" ;;
        crdgen) echo "kubevirt-$KUBEVIRT_VERSION+src-$(sha256sum "$CRDGEN_SRC" | cut -c1-12)" ;;
        *) echo "$KUBE_VERSION" ;;
    esac
}
stamp_of() { echo "$1 $(version_of "$1") $GO_VERSION recipe=$RECIPE"; }
bin_current() {
    [ -x "$BIN/$1" ] && [ -f "$BIN/.$1.stamp" ] && [ "$(cat "$BIN/.$1.stamp")" = "$(stamp_of "$1")" ]
}
# crdgen's product is the CRD file: it carries the same stamp as the binary
# that wrote it, so a new KubeVirt pin or crdgen source rewrites it.
crds_current() {
    [ -s "$CRDS" ] && [ -f "$PIN_DIR/.kubevirt-crds.stamp" ] \
        && [ "$(cat "$PIN_DIR/.kubevirt-crds.stamp")" = "$(stamp_of crdgen)" ]
}
is_current() {
    bin_current "$1" || return 1
    [ "$1" != crdgen ] || crds_current
}

mod_json_field() {  # module@version field -> value from `go mod download -json`
    "$GO" mod download -json "$1" | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}$/\1/p"
}

# Copy the `go` and `godebug` lines of the built module into its wrapper, so the
# binary gets the same language version and GODEBUG defaults as upstream's build.
go_lines() { grep -E '^(go|godebug) ' "$1" || true; }

wrapper_kubernetes() {
    local dir="$SRC/kubernetes" gomod minor staging
    [ -f "$dir/go.mod" ] && grep -q "k8s.io/kubernetes $KUBE_VERSION\$" "$dir/go.mod" && return 0
    mkdir -p "$dir"
    gomod=$(cd "$PIN_DIR" && mod_json_field "k8s.io/kubernetes@$KUBE_VERSION" GoMod)
    [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$KUBE_VERSION"
    # v1.34.4 -> v0.34.4: the published version of each staging module.
    minor="v0.${KUBE_VERSION#v1.}"
    staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod")
    [ -n "$staging" ] || die "no ./staging replaces found in $gomod"
    {
        echo "// Generated by scripts/build-kube.sh: builds k8s.io/kubernetes $KUBE_VERSION."
        echo "module rto-harness.local/build/kubernetes"
        echo
        go_lines "$gomod"
        echo
        echo "require k8s.io/kubernetes $KUBE_VERSION"
        echo
        echo "replace ("
        for m in $staging; do echo "	$m => $m $minor"; done
        echo ")"
    } >"$dir/go.mod.new"
    mv "$dir/go.mod.new" "$dir/go.mod"
    rm -f "$dir/go.sum"
    log "kubernetes wrapper: $(echo "$staging" | wc -l) staging modules replaced by $minor"
}

wrapper_plain() {   # name module version: a wrapper that only requires the module
    local name=$1 module=$2 version=$3 dir="$SRC/$1" gomod
    [ -f "$dir/go.mod" ] && grep -q "$module $version\$" "$dir/go.mod" && return 0
    mkdir -p "$dir"
    gomod=$(cd "$PIN_DIR" && mod_json_field "$module@$version" GoMod)
    [ -f "$gomod" ] || die "could not download $module@$version"
    {
        echo "// Generated by scripts/build-kube.sh: builds $module $version."
        echo "module rto-harness.local/build/$name"
        echo
        go_lines "$gomod"
        echo
        echo "require $module $version"
    } >"$dir/go.mod.new"
    mv "$dir/go.mod.new" "$dir/go.mod"
    rm -f "$dir/go.sum"
}

wrapper_kubevirt() {
    local dir="$SRC/crdgen" gomod replaces
    mkdir -p "$dir"
    cp "$CRDGEN_SRC" "$dir/main.go"
    [ -f "$dir/go.mod" ] && grep -q "kubevirt.io/kubevirt $KUBEVIRT_VERSION\$" "$dir/go.mod" && return 0
    gomod=$(cd "$PIN_DIR" && mod_json_field "kubevirt.io/kubevirt@$KUBEVIRT_VERSION" GoMod)
    [ -f "$gomod" ] || die "could not download kubevirt.io/kubevirt@$KUBEVIRT_VERSION"
    # Every replace of kubevirt's go.mod, in a block or on one line; a relative
    # one (./staging/src/kubevirt.io/X) becomes kubevirt.io/X at the same tag.
    replaces=$(awk -v v="$KUBEVIRT_VERSION" '
        /^replace[[:space:]]*\($/ { r = 1; next }
        r && /^\)/ { r = 0 }
        /^replace[[:space:]]+[^(]/ { sub(/^replace[[:space:]]+/, ""); r1 = 1 }
        (r || r1) && /=>/ {
            split($0, side, "=>"); split(side[1], lhs, " "); n = split(side[2], rhs, " ")
            if (rhs[1] ~ /^\.\.?\//) print "\t" lhs[1] " => " lhs[1] " " v
            else print "\t" lhs[1] " => " rhs[1] (n > 1 ? " " rhs[2] : "")
        }
        { r1 = 0 }' "$gomod")
    grep -q "kubevirt.io/api => kubevirt.io/api $KUBEVIRT_VERSION" <<<"$replaces" \
        || die "no ./staging replace of kubevirt.io/api found in $gomod"
    {
        echo "// Generated by scripts/build-kube.sh: builds crdgen against kubevirt.io/kubevirt $KUBEVIRT_VERSION."
        echo "module rto-harness.local/build/crdgen"
        echo
        go_lines "$gomod"
        echo
        echo "require kubevirt.io/kubevirt $KUBEVIRT_VERSION"
        echo
        echo "replace ("
        echo "$replaces"
        echo ")"
    } >"$dir/go.mod.new"
    mv "$dir/go.mod.new" "$dir/go.mod"
    rm -f "$dir/go.sum"
    log "kubevirt wrapper: $(echo "$replaces" | wc -l) replaces copied from kubevirt.io/kubevirt $KUBEVIRT_VERSION"
}

write_crds() {   # run crdgen; the CRD file and its stamp
    local n
    "$BIN/crdgen" >"$CRDS.tmp" || die "$BIN/crdgen failed"
    n=$(grep -c '^kind: CustomResourceDefinition$' "$CRDS.tmp" || true)
    [ "$n" -eq 3 ] || die "crdgen printed $n CRDs, not 3 (see $CRDS.tmp)"
    mv -f "$CRDS.tmp" "$CRDS"
    stamp_of crdgen >"$PIN_DIR/.kubevirt-crds.stamp"
    log "wrote $CRDS ($n CRDs, $(du -h "$CRDS" | cut -f1))"
}

build_one() {   # binary
    local b=$1 dir pkg tags="" ldflags="-s -w" v t0 t1 commit date
    v=$(version_of "$b")
    case "$b" in
        kube-*|kubelet|kubectl)
            wrapper_kubernetes
            dir="$SRC/kubernetes"; pkg="k8s.io/kubernetes/cmd/$b"
            date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' \
                "$("$GO" env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBE_VERSION.info")
            local major=${KUBE_VERSION#v}; major=${major%%.*}
            local minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
            for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
                ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
                ldflags+=" -X $p.gitTreeState=archive -X $p.buildDate=${date:-1970-01-01T00:00:00Z}"
            done
            ;;
        etcd)
            wrapper_plain etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
            dir="$SRC/etcd"; pkg="go.etcd.io/etcd/server/v3"
            ;;
        containerd|containerd-shim-runc-v2|ctr)
            wrapper_plain containerd github.com/containerd/containerd/v2 "$CONTAINERD_VERSION"
            dir="$SRC/containerd"; pkg="github.com/containerd/containerd/v2/cmd/$b"
            tags="no_btrfs no_devmapper no_zfs"
            local vp=github.com/containerd/containerd/v2/version
            ldflags+=" -X $vp.Version=$CONTAINERD_VERSION -X $vp.Package=github.com/containerd/containerd/v2"
            ;;
        pause)
            dir="$SRC/pause"; pkg="."
            mkdir -p "$dir"
            cp "$PAUSE_SRC" "$dir/main.go"
            printf '// Generated by scripts/build-kube.sh.\nmodule rto-harness.local/build/pause\n\ngo 1.22\n' >"$dir/go.mod"
            ;;
        crdgen)
            wrapper_kubevirt
            dir="$SRC/crdgen"; pkg="."
            ;;
    esac
    mkdir -p "$BIN"
    log "building $b ($pkg@$v) ..."
    t0=$(date +%s.%N)
    # The go command's output (hundreds of "go: downloading" lines on a cold
    # machine) goes to a log; on failure its tail is shown.
    local out="$PIN_DIR/build-$b.log"
    if ! (cd "$dir" && "${NICE[@]}" "$GO" build -trimpath ${tags:+-tags "$tags"} \
        -ldflags "$ldflags" -o "$BIN/.$b.tmp" "$pkg") >"$out" 2>&1; then
        tail -n 30 "$out" >&2
        die "building $b failed; the whole go output is in $out"
    fi
    t1=$(date +%s.%N)
    mv -f "$BIN/.$b.tmp" "$BIN/$b"
    stamp_of "$b" >"$BIN/.$b.stamp"
    local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$b" "$v" "$secs" \
        "$(stat -c %s "$BIN/$b")" "$GO_VERSION" >>"$TIMES"
    log "built $b in ${secs}s ($(du -h "$BIN/$b" | cut -f1))"
}

report_version() {  # binary -> one line of its version output
    local b=$1
    case "$b" in
        etcd) "$BIN/$b" --version 2>&1 | head -1 ;;
        ctr|containerd|pause) "$BIN/$b" --version 2>&1 | head -1 ;;
        crdgen) crds_current && echo "$("$BIN/$b" --version 2>&1 | head -1); $(head -1 "$CRDS")" ;;
        kubectl) "$BIN/$b" version --client 2>&1 | sed -n 's/^Client Version: //p' | head -1 ;;
        containerd-shim-runc-v2) "$BIN/$b" -v 2>&1 | sed -n 's/^[[:space:]]*Version:[[:space:]]*//p' | head -1 ;;
        *) "$BIN/$b" --version 2>&1 | head -1 ;;
    esac
}

START=$(date +%s)
stale=()
for b in "${WANT[@]}"; do is_current "$b" || stale+=("$b"); done

if [ ${#stale[@]} -gt 0 ]; then
    if [ $CHECK_ONLY -eq 1 ]; then
        die "missing or stale in $BIN: ${stale[*]}"
    fi
    # A cold build of everything fills ~1.3 GB of module cache, ~3.5 GB of build
    # cache and ~0.45 GB of output (measured with go1.26.8): refuse early below 7 GB.
    for d in "$("$GO" env GOMODCACHE)" "$("$GO" env GOCACHE)" "$PIN_DIR"; do
        p=$d; until [ -d "$p" ]; do p=$(dirname "$p"); done
        free_gb=$(df -P -BG "$p" | awk 'NR==2 {sub("G", "", $4); print $4}')
        [ "$free_gb" -ge "${RTO_KUBE_MIN_FREE_GB:-7}" ] \
            || die "only ${free_gb} GB free under $d: a cold build needs ~7 GB (RTO_KUBE_MIN_FREE_GB)"
    done
    mkdir -p "$PIN_DIR"
    log "pin $KUBE_VERSION (etcd $ETCD_VERSION, containerd $CONTAINERD_VERSION," \
        "kubevirt $KUBEVIRT_VERSION, $GO_VERSION): to build: ${stale[*]}"
    # Order matters only for the timings and for a cut-short run: etcd and
    # kube-apiserver first, they are what a control plane needs.
    for b in "${stale[@]}"; do
        # A missing or stale CRD file alone is rewritten without rebuilding crdgen.
        bin_current "$b" || build_one "$b"
        [ "$b" != crdgen ] || write_crds
    done
    log "cache sizes: module cache $(du -sh "$("$GO" env GOMODCACHE)" | cut -f1)," \
        "build cache $(du -sh "$("$GO" env GOCACHE)" | cut -f1), $PIN_DIR $(du -sh "$PIN_DIR" | cut -f1)"
fi

for b in "${WANT[@]}"; do
    out=$(report_version "$b") || true
    [ -n "$out" ] || die "$BIN/$b does not run (--version printed nothing)"
    log "ok $b: $out"
done
log "done in $(( $(date +%s) - START ))s: $BIN"
