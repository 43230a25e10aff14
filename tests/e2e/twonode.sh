# shellcheck shell=bash
# The two-node scenarios: node B joins the cluster once the single-node scenarios have run on
# node A, and these drive both with kubectl and helm only, as a user would; the harness checks
# each node in its own namespaces (mount table, processes, kubelet and pail state) and the
# bucket through the S3 server's filer and moto, never through pail. Sourced by
# tests/e2e/run.sh after scenarios.sh.

# Node B, seen from the host: its pail FUSE mounts (its own mount table), its mount
# processes (its network namespace), the CSI volume dirs and staging dirs of its kubelet,
# and the mount records of its node plugin.
b_mounts() {
  awk -v root="$LAB/kubelet/" '$3 == "fuse.pail" && index($2, root) == 1 {print $2}' \
    "/proc/$(cat "$LAB/$NODE_B/holder.pid")/mounts"
}
b_mount_processes() { procs_in "$NETNS_B" "^/usr/bin/pail mount-worker "; }
b_keepers() { procs_in "$NETNS_B" "^/usr/bin/pail keep-connection " | sort | tr '\n' ' '; }
b_csi_volume_dirs() {
  find "$LAB/$NODE_B/kubelet/pods" -mindepth 4 -maxdepth 4 -path '*/volumes/kubernetes.io~csi/*' 2>/dev/null || true
}
b_staged() {
  find "$LAB/$NODE_B/kubelet/plugins/kubernetes.io/csi" -name globalmount 2>/dev/null || true
  find "$LAB/$NODE_B/state/mounts" "$LAB/$NODE_B/state/binds" -name '*.json' 2>/dev/null || true
}
b_is_clean() { [ -z "$(b_mounts)$(b_mount_processes)$(b_csi_volume_dirs)$(b_staged)" ]; }
pod_node() { kc get pod "$1" -o 'jsonpath={.spec.nodeName}'; }
# The pods of the Deployment APP, running, one name per line.
running_pods() { kc get pods -l "app=$1" --field-selector status.phase=Running -o name | sed 's#^pod/##'; }
errors_in() { kc logs "$1" | grep -c '^error' || true; }
# The longest time in seconds between two successive whole reads a reader logged ("ok N EPOCH").
longest_pause() { kc logs "$1" | awk '$1 == "ok" { if (last && $3 - last > max) max = $3 - last; last = $3 } END { print max + 0 }'; }
# The exe of every mount process of a node is the image TAG's binary (e2e2 carries a marker).
mounts_run() { # node-procs-function tag
  local p n=0
  for p in $($1); do
    n=$((n + 1))
    if grep -q 'pail e2e2' "/proc/$p/exe" 2>/dev/null; then [ "$2" = e2e2 ] || return 1; else [ "$2" = e2e ] || return 1; fi
  done
  ((n > 0))
}

join_node_b() {
  log "node $NODE_B joins: its own network namespace ($NODE_B_IP on the lab's bridge), mount namespace, containerd and kubelet"
  local t0=$SECONDS
  start_node_b
  wait_until "a node plugin on $NODE_B Ready and registered" 180 plugin_ready_on "$NODE_B"
  wait_until "the node plugin to remove the startup taint of $NODE_B" 60 node_untainted "$NODE_B"
  assert_lab_listeners
  log "  $NODE_B Ready and serving pail in $((SECONDS - t0)) s"
}
plugin_ready_on() {
  local p
  p=$(node_plugin_pod "$1")
  [ -n "$p" ] && kc wait --for=condition=Ready "pod/$p" -n kube-system --timeout=1s && driver_registered "$1"
}

# A reader of static/big.bin on the node given: whole reads checked against its md5, one
# line per read with the time ("ok N EPOCH"), "error" for a failed call, FAILED for wrong bytes.
BIG_READER='want=$(cat /data/big.md5)
n=0
while true; do
  got=$(md5sum < /data/big.bin) || { echo "error: read $(date +%s)"; sleep 0.2; continue; }
  [ "$got" = "$want" ] || { echo "FAILED: $got"; exit 1; }
  n=$((n + 1)); echo "ok $n $(date +%s)"
done'

scenario_across_nodes() {
  log "scenario: one ReadWriteMany PV, a pod on each node: written on A, read on B; appends from both at once; both writing one file"
  local wait_for='w() { for i in $(seq 600); do [ -e "$1" ] && return 0; sleep 0.1; done; echo "FAILED: no $1"; exit 1; }'
  POD_NODE=$NODE_A run_pod xa "$(claim e2e-static)" "set -e
$wait_for
mkdir -p /tmp
mkdir -p /data/x && cd /data/x
head -c 1048576 /dev/urandom > /tmp/a.bin
echo \"mine \$(md5sum < /tmp/a.bin)\"
cp /tmp/a.bin from-a.bin
echo \"closed \$(date +%s)\"
echo 'base' > edit.txt
touch ready-a; w ready-b
for i in \$(seq 40); do echo \"a \$i\" >> log-a.txt; done
# both rewrite same.bin; A closes first, B last
# (in a subshell: busybox runs cat in the shell itself, and the opener's close stores)
exec 3>same.bin; (cat /tmp/a.bin >&3); touch same-a; w same-b
exec 3>&-; touch same-a-closed
# both edit edit.txt (append: staged from the same version); A stores first
# (every close stores: the shell's restoring of its stdout after \`echo >&4\` is one)
exec 4>>edit.txt; touch edit-a; w edit-b
echo 'from a' >&4; dd if=/dev/null of=edit.txt conv=notrunc,fsync 2>&1 && echo 'a stored'
exec 4>&-; touch edit-a-closed
w done-b"
  POD_NODE=$NODE_B run_pod xb "$(claim e2e-static)" "set -e
$wait_for
mkdir -p /tmp
w /data/x/from-a.bin; cd /data/x
echo \"seen \$(date +%s)\"
echo \"read \$(md5sum < from-a.bin)\"
head -c 1048576 /dev/urandom > /tmp/b.bin
echo \"mine \$(md5sum < /tmp/b.bin)\"
touch ready-b; w ready-a
for i in \$(seq 40); do echo \"b \$i\" >> log-b.txt; done
exec 3>same.bin; (cat /tmp/b.bin >&3); touch same-b; w same-a-closed
exec 3>&-
w edit-a; exec 4>>edit.txt; touch edit-b; w edit-a-closed
echo 'from b' >&4 || true
if out=\$(dd if=/dev/null of=edit.txt conv=notrunc,fsync 2>&1); then echo \"b stored: \$out\"; else echo \"b refused: \$out\"; fi
exec 4>&- || true
touch done-b"
  # B's refused edit: an Event on the pod, as for every failed upload.
  expect_warning xb MountError
  wait_succeeded xb 180
  wait_succeeded xa 60
  [ "$(pod_node xa)/$(pod_node xb)" = "$NODE_A/$NODE_B" ] || die "xa and xb are not on the two nodes: $(pod_node xa)/$(pod_node xb)"
  local closed seen want
  closed=$(kc logs xa | awk '$1 == "closed" {print $2}')
  seen=$(kc logs xb | awk '$1 == "seen" {print $2}')
  want=$(bucket_object static/x/from-a.bin | md5sum)
  [ "$(kc logs xb | sed -n 's/^read //p')" = "$want" ] || die "B read other bytes than A wrote: $(kc logs xb)"
  # The metadata TTL is 1 s (a name B looked up before A's close may be cached absent that long).
  ((seen - closed <= 3)) || die "B saw A's file $((seen - closed)) s after A's close"
  # Appends at once, each to its own file: every line, in order, in the store.
  local who
  for who in a b; do
    [ "$(bucket_object "static/x/log-$who.txt")" = "$(for i in $(seq 40); do echo "$who $i"; done)" ] ||
      die "static/x/log-$who.txt is not the 40 appends of $who: $(bucket_object "static/x/log-$who.txt" | head -3)"
  done
  # Two writers of one file: the last close wins whole.
  local got
  got=$(bucket_object static/x/same.bin | md5sum)
  [ "$got" = "$(kc logs xb | sed -n 's/^mine //p')" ] ||
    die "static/x/same.bin is not B's bytes whole (the last close): $got; A's $(kc logs xa | sed -n 's/^mine //p'), B's $(kc logs xb | sed -n 's/^mine //p')"
  # Two edits of one version: the first stored wins, the second is refused with ESTALE and
  # changes nothing.
  kc logs xa | grep -qx 'a stored' || die "A's edit was not stored: $(kc logs xa)"
  kc logs xb | grep -q '^b refused: .*Stale file handle' || die "B's conflicting edit was not refused with ESTALE: $(kc logs xb | grep '^b ')"
  [ "$(bucket_object static/x/edit.txt)" = "$(printf 'base\nfrom a')" ] || die "static/x/edit.txt is a mix: $(bucket_object static/x/edit.txt)"
  log "  A closed at $closed, B saw it at $seen; 40 + 40 appends at once; same.bin is B's (last close); B's edit: $(kc logs xb | sed -n 's/^b refused: //p')"
  delete_pods xa xb
}

# Readers of big.bin on both nodes, for the failure and upgrade scenarios.
start_readers() {
  POD_NODE=$NODE_A run_pod reader-a "$(claim e2e-static)" "$BIG_READER"
  POD_NODE=$NODE_B run_pod reader-b "$(claim e2e-static)" "$BIG_READER"
  wait_ready reader-a 120
  wait_ready reader-b 120
  wait_until "reader-a reading" 120 oks_at_least reader-a 2
  wait_until "reader-b reading" 120 oks_at_least reader-b 2
}
readers_fine() {
  local p
  for p in reader-a reader-b; do
    [ "$(pod_phase "$p")" = Running ] || { show_pod "$p"; die "$p stopped"; }
    no_failed_reads "$p"
  done
}

scenario_node_b_failures() {
  log "scenario: kill -9 of node B's plugin, then of one of its mount processes while no plugin runs: B's pods pause at most, A's never"
  start_readers
  local plugin mount keepers before_a before_b t0 pause_a
  plugin=$(procs_in "$NETNS_B" '^/usr/bin/pail csi --mode=node' | head -1)
  mount=$(b_mount_processes | head -1)
  [ -n "$plugin" ] && [ -n "$mount" ] || die "no node plugin ($plugin) or mount process ($mount) on $NODE_B"
  [ -z "$(mount_processes | grep -x "$mount")" ] || die "B's mount process $mount is in A's namespace"
  expect_warning reader-b MountProcessDied
  # The kubelet's periodic republish (requiresRepublish) of B's pod while B has no plugin:
  # retried once it is back; the mount serves on meanwhile. Node A's pods get none.
  expect_warning reader-b FailedMount 'MountVolume.SetUp failed for volume "e2e-static" : kubernetes.io/csi: mounter.SetUpAt failed to (get CSI client: driver name [^ ]+ not found in the list of registered CSI drivers|check for STAGE_UNSTAGE_VOLUME capability: rpc error: code = Unavailable)'
  before_a=$(oks reader-a)
  before_b=$(oks reader-b)
  t0=$(date +%s)
  keepers=$(b_keepers)
  [ -n "$keepers" ] || die "no keeper (pail keep-connection) holds B's mount connections"
  kill -9 "$plugin"
  # Then the mount process, while no plugin runs: its keeper holds the connection, B's reads
  # wait instead of failing, and the next plugin takes the connection from the keeper and
  # starts a successor (docs/SEMANTICS.md, "When the mount process dies").
  kill -9 "$mount"
  wait_until "a new node plugin on $NODE_B" 120 plugin_back_on_b "$plugin"
  # (Until the kubelet has restarted the container, `kubectl logs` shows the killed one's.)
  wait_until "B's new plugin reviving the mount from its keeper" 60 b_revived
  wait_until "a successor of B's mount process" 60 b_mount_replaced "$mount"
  [ "$(b_keepers)" = "$keepers" ] || die "B's keepers changed: $keepers -> $(b_keepers)"
  wait_until "a node plugin on $NODE_B again" 120 plugin_ready_on "$NODE_B"
  wait_until "3 more reads on B" 120 oks_at_least reader-b $((before_b + 3))
  wait_until "3 more reads on A" 60 oks_at_least reader-a $((before_a + 3))
  readers_fine
  [ "$(errors_in reader-a)" = 0 ] || die "reader-a saw failed calls: $(kc logs reader-a | grep '^error' | head -3)"
  # A's reads went on through B's outage: no pause longer than a slow read.
  pause_a=$(kc logs reader-a | awk -v t0="$t0" '$1 == "ok" && $3 >= t0 - 1 { if (last && $3 - last > max) max = $3 - last; last = $3 } END { print max + 0 }')
  ((pause_a <= 5)) || die "reader-a paused ${pause_a} s while node B's plugin and mount process were killed"
  log "  A: $(($(oks reader-a) - before_a)) reads meanwhile, longest pause ${pause_a} s, 0 errors; B: longest pause $(longest_pause reader-b) s, $(errors_in reader-b) calls failed in flight; B's mount process $mount -> $(b_mount_processes | tr '\n' ' ')"
}

scenario_rolling_upgrade() {
  log "scenario: helm upgrade rolls the DaemonSet across the nodes, one at a time, while a pod on each reads: every mount handed over, 0 failed reads"
  local before_a before_b errs_b
  mounts_run mount_processes e2e2 || die "A's mount processes do not run e2e2 before the upgrade"
  mounts_run b_mount_processes e2e2 || die "B's mount processes do not run e2e2 before the upgrade"
  before_a=$(oks reader-a)
  before_b=$(oks reader-b)
  errs_b=$(errors_in reader-b)
  # maxVolumesPerNode: 2, for the volume limits scenario (the plugins register anew).
  hm upgrade pail "$REPO/charts/pail" --namespace kube-system --reuse-values --set image.tag=e2e \
    --set node.maxVolumesPerNode=2 --wait --timeout 300s >/dev/null
  wait_until "the DaemonSet rolled out on both nodes" 240 kc rollout status ds/pail-node -n kube-system --timeout=2s
  # One node at a time: the second node's new plugin was created once the first's was Ready.
  local first second
  first=$(kc get pods -n kube-system -l app.kubernetes.io/component=node --sort-by=.metadata.creationTimestamp \
    -o 'jsonpath={.items[0].status.conditions[?(@.type=="Ready")].lastTransitionTime}')
  second=$(kc get pods -n kube-system -l app.kubernetes.io/component=node --sort-by=.metadata.creationTimestamp \
    -o 'jsonpath={.items[1].metadata.creationTimestamp}')
  [ -n "$first" ] && [ -n "$second" ] && [[ ! "$second" < "$first" ]] ||
    die "the DaemonSet did not roll one node at a time: the second plugin was created at $second, the first Ready at $first"
  wait_until "A's mounts handed over to the new version" 120 mounts_run mount_processes e2e
  wait_until "B's mounts handed over to the new version" 120 mounts_run b_mount_processes e2e
  wait_until "3 more reads on A after the upgrade" 120 oks_at_least reader-a $((before_a + 3))
  wait_until "3 more reads on B after the upgrade" 120 oks_at_least reader-b $((before_b + 3))
  readers_fine
  [ "$(errors_in reader-a)" = 0 ] || die "reader-a saw failed reads during the upgrade"
  [ "$(errors_in reader-b)" = "$errs_b" ] || die "reader-b saw failed reads during the upgrade"
  log "  one node at a time (first plugin Ready $first, second created $second); both nodes' mounts run the new binary; reads during the roll: A $(($(oks reader-a) - before_a)), B $(($(oks reader-b) - before_b)), 0 failed"
}

volume_limit_is() { [ "$(kc get csinode "$1" -o "jsonpath={.spec.drivers[?(@.name==\"$DRIVER\")].allocatable.count}")" = "$2" ]; }
limit_pv() { # name prefix
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  csi:
    driver: $DRIVER
    volumeHandle: $1
    volumeAttributes: {bucketName: pail-test, prefix: $2, endpointUrl: "$S3_ENDPOINT", region: us-east-1}
    nodePublishSecretRef: {name: e2e-s3, namespace: default}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $1, namespace: default}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: $1
  resources: {requests: {storage: 1Gi}}
EOF
}

scenario_volume_limits() {
  log "scenario: maxVolumesPerNode 2: a pod that would exceed it on node A goes to node B"
  wait_until "CSINode $NODE_A to allow 2 volumes" 60 volume_limit_is "$NODE_A" 2
  wait_until "CSINode $NODE_B to allow 2 volumes" 60 volume_limit_is "$NODE_B" 2
  limit_pv e2e-lim1 lim1/
  limit_pv e2e-lim2 lim2/
  wait_until "PVC e2e-lim1 to bind" 60 pvc_bound e2e-lim1
  wait_until "PVC e2e-lim2 to bind" 60 pvc_bound e2e-lim2
  # A holds e2e-static (reader-a) and e2e-lim1: full. lim2 prefers A, and may not go there.
  POD_NODE=$NODE_A run_pod lim1 "$(claim e2e-lim1)" 'echo one > /data/one && sleep 3600'
  wait_ready lim1 120
  POD_NODE= run_pod_as lim2 "  affinity:
    nodeAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          preference: {matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [\"$NODE_A\"]}]}" \
    "$(claim e2e-lim2)" 'echo two > /data/two && sleep 3600'
  wait_ready lim2 120
  [ "$(pod_node lim2)" = "$NODE_B" ] || die "lim2 went to $(pod_node lim2), past node A's limit of 2 volumes"
  [ "$(bucket_object lim2/two)" = two ] || die "lim2/two is not in the bucket"
  log "  CSINode allocatable 2 on both; lim2 (preferring $NODE_A, which holds 2 volumes) was placed on $(pod_node lim2)"
  delete_pods lim1 lim2
  local pv
  for pv in e2e-lim1 e2e-lim2; do
    kc delete pvc "$pv" --wait=true --timeout=60s >/dev/null
    kc delete pv "$pv" --wait=true --timeout=60s >/dev/null
  done
}

scenario_drain() {
  log "scenario: kubectl drain of $NODE_B moves its pod to $NODE_A and leaves nothing of pail on B; after uncordon the pod comes back"
  delete_pods reader-a reader-b
  kc apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: roamer, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: roamer}}
  template:
    metadata: {labels: {app: roamer}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              preference: {matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: ["$NODE_B"]}]}
      containers:
        - name: main
          image: localhost/busybox:e2e
          imagePullPolicy: Never
          command: [sh, -c]
          args:
            - |
$(sed 's/^/              /' <<<"$BIG_READER")
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, persistentVolumeClaim: {claimName: e2e-static}}]
YAML
  local p
  wait_until "the roamer running" 120 has_output running_pods roamer
  p=$(running_pods roamer)
  [ "$(pod_node "$p")" = "$NODE_B" ] || die "the roamer started on $(pod_node "$p"), not $NODE_B"
  wait_until "the roamer reading on $NODE_B" 120 oks_at_least "$p" 2
  [ -n "$(b_mounts)" ] && [ -n "$(b_mount_processes)" ] || die "no pail mount on $NODE_B for the roamer"
  kc drain "$NODE_B" --ignore-daemonsets --delete-emptydir-data --timeout=180s >/dev/null 2>"$LAB/logs/drain.log" ||
    die "kubectl drain failed: $(tail -3 "$LAB/logs/drain.log")"
  wait_until "the roamer running on $NODE_A" 180 roamer_on "$NODE_A"
  p=$(running_pods roamer)
  wait_until "the roamer reading on $NODE_A" 120 oks_at_least "$p" 2
  no_failed_reads "$p"
  wait_until "no pail mount, mount process, volume dir, staging dir or mount record left on $NODE_B" 120 b_is_clean
  log "  drained: the roamer reads on $NODE_A; $NODE_B has no pail mount, mount process, staging dir or record"
  kc uncordon "$NODE_B" >/dev/null
  delete_pods "$p"
  wait_until "the roamer back on $NODE_B" 180 roamer_on "$NODE_B"
  p=$(running_pods roamer)
  wait_until "the roamer reading on $NODE_B again" 120 oks_at_least "$p" 2
  no_failed_reads "$p"
  kc delete deployment roamer --wait=true --timeout=120s >/dev/null
  wait_until "the roamer's pods gone" 180 no_output kc get pods -l app=roamer -o name
  wait_until "node $NODE_B clean" 120 b_is_clean
  assert_node_clean
}
b_mount_replaced() { local now; now=$(b_mount_processes); [ -n "$now" ] && ! grep -qx "$1" <<<"$now"; }
plugin_back_on_b() { # a node plugin other than $1 runs on B and serves CSI (it adopts the live mounts first)
  local now
  now=$(procs_in "$NETNS_B" '^/usr/bin/pail csi --mode=node' | head -1)
  [ -n "$now" ] && [ "$now" != "$1" ] &&
    grep -q 'serving CSI' <<<"$(kc logs -n kube-system "$(node_plugin_pod "$NODE_B")" -c pail 2>/dev/null)"
}
b_revived() { # the log of B's plugin (read whole first: grep -q would close the pipe early)
  grep -q 'a successor serves it on the connection its keeper held' <<<"$(kc logs -n kube-system "$(node_plugin_pod "$NODE_B")" -c pail 2>/dev/null)"
}
roamer_on() { local p; p=$(running_pods roamer); [ -n "$p" ] && [ "$(pod_node "$p")" = "$1" ]; }

scenario_identity_per_node() {
  log "scenario: two ServiceAccounts with pod identity, one per node: moto sees each node's mount sign with its own pod's role only"
  in_ns curl -sf -X POST "$MOTO/moto-api/recorder/reset-recording" >/dev/null
  in_ns curl -sf -X POST "$MOTO/moto-api/recorder/start-recording" >/dev/null
  local who sa
  for who in a b; do
    sa=trainer
    [ "$who" = b ] && sa=evaluator
    POD_NODE=$([ "$who" = a ] && echo "$NODE_A" || echo "$NODE_B") run_pod_as "id-$who" "  serviceAccountName: $sa" "      csi:
        driver: $DRIVER
        volumeAttributes: {bucketName: pod-identity, prefix: node-$who/, endpointUrl: \"$MOTO\", stsEndpoint: \"$MOTO\", region: us-east-1}" \
      "echo $who > /data/mine.txt && cat /data/mine.txt && ls /data && sleep 3600"
  done
  wait_ready id-a 120
  wait_ready id-b 120
  wait_until "id-a's output" 30 has_output kc logs id-a
  wait_until "id-b's output" 30 has_output kc logs id-b
  in_ns curl -sf "$MOTO/moto-api/recorder/download-recording" >"$LAB/moto-recording-nodes.jsonl"
  in_ns curl -sf "$MOTO/moto-api/data.json" >"$LAB/moto-data.json"
  python3 - "$LAB/moto-recording-nodes.jsonl" "$LAB/moto-data.json" <<'PY' || die "moto's record does not show each node signing with its own pod's role"
import base64, json, sys, urllib.parse
reqs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
data = json.load(open(sys.argv[2]))
def body(r):
    b = r.get("body") or ""
    return base64.b64decode(b).decode() if r.get("body_encoded") else b
# The temporary keys STS issued, and the role of each (moto's own state).
roles = {}
def walk(o):
    if isinstance(o, dict):
        if "access_key_id" in o and "role_arn" in o:
            roles[o["access_key_id"]] = o["role_arn"]
        for v in o.values():
            walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
walk(data)
assert roles, "moto issued no temporary keys"
want = {"node-a/": "arn:aws:iam::123456789012:role/e2e-trainer", "node-b/": "arn:aws:iam::123456789012:role/e2e-evaluator"}
seen = {k: 0 for k in want}
for r in reqs:
    if "/pod-identity" not in r["url"]:
        continue
    u = urllib.parse.unquote(r["url"])
    which = [k for k in want if "/pod-identity/" + k in u or "prefix=" + k in u]
    if not which:
        continue
    h = {k.lower(): v for k, v in r["headers"].items()}
    auth = h.get("authorization", "")
    key = auth.split("Credential=")[1].split("/")[0] if "Credential=" in auth else ""
    assert roles.get(key) == want[which[0]], (r["method"], u, key, roles.get(key))
    seen[which[0]] += 1
assert all(seen.values()), seen
print(f"  S3 requests under node-a/ signed with e2e-trainer's keys only ({seen['node-a/']}), under node-b/ with e2e-evaluator's only ({seen['node-b/']})", file=sys.stderr)
PY
  delete_pods id-a id-b
}

# What the two-node scenarios need of the single-node ones (PAIL_E2E_ONLY=two-node runs
# only these and the two-node scenarios, for work on them): the static PV and its Secret,
# static/big.bin, the ServiceAccounts with roles and moto's bucket, mounts of the e2e2 image.
two_node_prerequisites() {
  apply secret.yaml
  apply static.yaml
  wait_until "PVC e2e-static to bind" 60 pvc_bound e2e-static
  run_pod bigfile "$(claim e2e-static)" 'dd if=/dev/urandom of=/data/big.bin bs=1M count=64 2>/dev/null
md5sum < /data/big.bin > /data/big.md5'
  wait_succeeded bigfile 180
  delete_pods bigfile
  moto_py <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
s3.create_bucket(Bucket="pod-identity")
PY
  local sa
  for sa in trainer evaluator; do
    kc create serviceaccount "$sa" >/dev/null
    kc annotate serviceaccount "$sa" "eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/e2e-$sa" >/dev/null
  done
  local old
  old=$(node_plugin_pod)
  hm upgrade pail "$REPO/charts/pail" --namespace kube-system --reuse-values --set image.tag=e2e2 --wait --timeout 120s >/dev/null
  wait_until "the upgraded node plugin Ready and registered" 120 plugin_ready "$old"
}

run_two_node_scenarios() {
  join_node_b
  scenario_across_nodes
  scenario_node_b_failures
  scenario_rolling_upgrade
  scenario_volume_limits
  scenario_drain
  scenario_identity_per_node
  wait_until "node $NODE_B clean" 120 b_is_clean
}
