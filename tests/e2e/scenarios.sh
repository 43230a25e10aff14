# shellcheck shell=bash
# The end-to-end scenarios, driven with kubectl and helm only, as a user would; the harness
# then checks the node (mount table, processes, kubelet dirs) and the bucket (through the S3
# server's filer, not through pail). Sourced by tests/e2e/run.sh once the cluster and the S3
# server are up.

DRIVER=s3.csi.pail.dev
S3_ENDPOINT=http://$LAB_IP:$E2E_S3_PORT
FILER=http://$LAB_IP:$((E2E_S3_PORT + 3000)) # SeaweedFS's filer
GCS_ENDPOINT=http://$LAB_IP:$E2E_GCS_PORT # fake-gcs-server

# The object KEY of the test bucket, read from the S3 server's filer.
bucket_object() { in_ns curl -sf "$FILER/buckets/pail-test/$1"; }
# The object KEY of the GCS test bucket, read from fake-gcs-server's JSON API.
gcs_object() { in_ns curl -sf "$GCS_ENDPOINT/storage/v1/b/pail-gcs-test/o/$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1")?alt=media"; }

# pail FUSE mounts under node A's kubelet root dir (the host's mount table), one per line.
pail_mounts() { awk -v root="$LAB/kubelet/" '$3 == "fuse.pail" && index($2, root) == 1 {print $2}' /proc/mounts; }
# The processes matching PATTERN in the network namespace NETNS (a node's), one pid per line.
procs_in() { # netns pattern
  local p ns
  ns=$(stat -L -c %i "/run/netns/$1")
  for p in $(pgrep -f "$2"); do
    [ "$(stat -L -c %i "/proc/$p/ns/net" 2>/dev/null)" = "$ns" ] && echo "$p"
  done
  return 0
}
# Live `pail mount` processes of node A.
# (The driver starts them as `pail mount-worker --spec-fd 5`: their options are in the spec.)
mount_processes() { procs_in "$NETNS" "^/usr/bin/pail mount-worker "; }
# CSI volume directories the kubelet still has.
csi_volume_dirs() { find "$LAB/kubelet/pods" -mindepth 4 -maxdepth 4 -path '*/volumes/kubernetes.io~csi/*' 2>/dev/null || true; }
node_is_clean() { [ -z "$(pail_mounts)$(mount_processes)$(csi_volume_dirs)" ]; }
assert_node_clean() {
  wait_until "no pail mount, mount process or CSI volume dir on the node" 60 node_is_clean
}

apply() { # manifest under tests/e2e/manifests, placeholders filled
  sed -e "s#@S3_ENDPOINT@#$S3_ENDPOINT#g" -e "s#@DRIVER@#$DRIVER#g" -e "s#@MOTO@#$MOTO#g" \
    "$REPO/tests/e2e/manifests/$1" | kc apply -f - >/dev/null
}

# Volume stanzas for run_pod.
claim() { printf '      persistentVolumeClaim: {claimName: %s}\n' "$1"; }
inline() { # prefix
  cat <<EOF
      csi:
        driver: $DRIVER
        volumeAttributes: {bucketName: pail-test, prefix: $1, endpointUrl: "$S3_ENDPOINT", region: us-east-1}
        nodePublishSecretRef: {name: e2e-s3}
EOF
}

# run_pod NAME VOLUME-STANZA SCRIPT: a busybox pod running SCRIPT with the volume at /data.
run_pod() { run_pod_as "$1" "" "$2" "$3"; }
# run_pod_as NAME SPEC-LINES VOLUME-STANZA SCRIPT: the same with extra pod spec lines
# (serviceAccountName, securityContext), indented by two spaces.
# The pod runs on node POD_NODE (node A unless set; none: where the scheduler places it).
run_pod_as() {
  local on=
  [ -n "${POD_NODE-$NODE_A}" ] && on="  nodeSelector: {kubernetes.io/hostname: \"${POD_NODE-$NODE_A}\"}"
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: default}
spec:
$2
$on
  hostNetwork: true
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: localhost/busybox:e2e
      imagePullPolicy: Never
      command: [sh, -c]
      args:
        - |
$(sed 's/^/          /' <<<"$4")
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
$3
EOF
}

plugin_metrics() { # of the node plugin on node A, or on the node named
  in_ns curl -sf "http://$(kc get node "${1:-$NODE_A}" -o 'jsonpath={.status.addresses[?(@.type=="InternalIP")].address}'):9812/metrics"
}
pod_phase() { kc get pod "$1" -o 'jsonpath={.status.phase}'; }
show_pod() { kc logs "$1" >&2 || true; kc describe pod "$1" | tail -15 >&2 || true; }
# The kubelet (1.20) can still be in a sync of a pod that has run to completion when its
# volume manager drops the pod's volumes; that sync then waits its 2 min for every volume of
# the pod, the kubelet's own ServiceAccount token volume too, and says so on the pod. A pod
# that Succeeded had its volumes mounted (it read or wrote through them), so this Event on
# it, naming its token volume as unmounted as well, is not a mount failure; on any other pod
# it still fails the run.
LATE_MOUNT_WAIT='Unable to attach or mount volumes: unmounted volumes=\[([^]]* )?(default-token|kube-api-access)-[a-z0-9]+( [^]]*)?\], unattached volumes=\[[^]]*\]: timed out waiting for the condition$'
wait_succeeded() { # pod seconds
  local deadline=$((SECONDS + $2)) phase
  while :; do
    phase=$(pod_phase "$1" 2>/dev/null || true)
    if [ "$phase" = Succeeded ]; then
      expect_warning "$1" FailedMount "$LATE_MOUNT_WAIT"
      return 0
    fi
    if [ "$phase" = Failed ] || ((SECONDS > deadline)); then
      show_pod "$1"
      die "pod $1 did not succeed (phase ${phase:-none})"
    fi
    sleep 0.5
  done
}
wait_ready() { kc wait --for=condition=Ready "pod/$1" --timeout="${2}s" >/dev/null || { show_pod "$1"; die "pod $1 not ready"; }; }
# The 1.20 kubelet deletes a pod once its exited containers are removed, which its
# container GC may leave for its next pass (every minute): allow for two.
delete_pods() { kc delete pod "$@" --wait=true --timeout=180s >/dev/null; }
pvc_bound() { [ "$(kc get pvc "$1" -o 'jsonpath={.status.phase}')" = Bound ]; }

node_plugin_pod() { # on node A, or on the node named
  kc get pods -n kube-system -l app.kubernetes.io/component=node --field-selector "spec.nodeName=${1:-$NODE_A}" \
    -o 'jsonpath={.items[*].metadata.name}'
}
driver_registered() { kc get csinode "${1:-$NODE_A}" -o 'jsonpath={.spec.drivers[*].name}' | grep -qw "$DRIVER"; }
driver_unregistered() { ! driver_registered; }
no_plugin_pods() { [ -z "$(kc get pods -n kube-system -l app.kubernetes.io/component=node -o name)" ]; }
plugin_ready() { # a node plugin pod other than $1 is Ready and registered
  local p
  p=$(node_plugin_pod)
  [ -n "$p" ] && [ "$p" != "${1:-}" ] && kc wait --for=condition=Ready "pod/$p" -n kube-system --timeout=1s &&
    driver_registered
}

node_untainted() { ! kc get node "${1:-$NODE_A}" -o 'jsonpath={.spec.taints[*].key}' | grep -q "$DRIVER/agent-not-ready"; }
pod_event() { kc get events --field-selector "involvedObject.name=$1,reason=$2" -o name | grep -q .; }
mount_log_in_plugin() { kc logs -n kube-system "$(node_plugin_pod)" | grep 'pail::mount' | grep -q "$1"; }
# (No namespace label: the chart's metricsNamespaceLabels is off by default.)
volume_read_bytes() { plugin_metrics | grep -q "^pail_volume_read_bytes_total{volume_id=\"$1\",mount=\"[0-9a-f]*\"} [1-9]"; }

helm_install() {
  log "helm install (the node plugin registers itself with the kubelet; local images)"
  ! node_untainted || die "the node did not start with the startup taint"
  hm install pail "$REPO/charts/pail" --namespace kube-system --wait --timeout 120s \
    --set image.repository=localhost/pail --set image.tag=e2e --set image.pullPolicy=Never \
    --set kubeletDir="$LAB/kubelet" --set node.registration=self --set node.stateDir="$LAB/state" \
    --set "node.allowedEndpoints={$LAB_IP}" --set controller.enabled=false \
    --set "node.kubernetesApiServer=$LAB_IP:16443" >/dev/null
  wait_until "CSINode 127.0.0.1 to list $DRIVER" 60 driver_registered
  wait_until "the node plugin to remove the startup taint" 60 node_untainted
  log "  the startup taint $DRIVER/agent-not-ready was removed once the plugin registered"
}

scenario_static_pv() {
  log "scenario: Secret + static PV + PVC; one pod writes, a second reads and answers"
  apply secret.yaml
  apply static.yaml
  wait_until "PVC e2e-static to bind" 60 pvc_bound e2e-static
  # The writer waits for the reader's answer: both pods have the volume mounted at once.
  run_pod writer "$(claim e2e-static)" 'echo "hello from the writer pod" > /data/hello.txt
for i in $(seq 120); do [ -f /data/ack.txt ] && cat /data/ack.txt && exit 0; sleep 1; done
echo "no answer from the reader"; exit 1'
  run_pod reader "$(claim e2e-static)" 'for i in $(seq 120); do [ -f /data/hello.txt ] && break; sleep 1; done
cat /data/hello.txt && cat /data/hello.txt > /data/ack.txt'
  wait_succeeded reader 120
  wait_succeeded writer 120
  [ "$(kc logs reader)" = "hello from the writer pod" ] || die "the reader read '$(kc logs reader)'"
  [ "$(kc logs writer)" = "hello from the writer pod" ] || die "the writer read back '$(kc logs writer)'"
  [ "$(bucket_object static/hello.txt)" = "hello from the writer pod" ] || die "static/hello.txt is not in the bucket"
  [ "$(bucket_object static/ack.txt)" = "hello from the writer pod" ] || die "static/ack.txt is not in the bucket"
}

scenario_inline() {
  log "scenario: CSI ephemeral inline volume"
  run_pod inline "$(inline inline/)" 'mkdir -p /data/a/b && echo inline > /data/a/b/c.txt && cat /data/a/b/c.txt'
  wait_succeeded inline 120
  [ "$(kc logs inline)" = inline ] || die "inline pod read '$(kc logs inline)'"
  [ "$(bucket_object inline/a/b/c.txt)" = inline ] || die "inline/a/b/c.txt is not in the bucket"
}

scenario_gcs() {
  log "scenario: an inline volume on Google Cloud Storage (fake-gcs-server), service account key from a Secret"
  run_pod gcs "      csi:
        driver: $DRIVER
        volumeAttributes: {provider: gcs, bucketName: pail-gcs-test, prefix: pods/, endpointUrl: \"$GCS_ENDPOINT\"}
        nodePublishSecretRef: {name: e2e-gcs}" 'mkdir -p /data/d && echo gcs > /data/d/g.txt && cat /data/d/g.txt && ls /data/d'
  wait_succeeded gcs 120
  [ "$(kc logs gcs)" = "$(printf 'gcs\ng.txt')" ] || die "gcs pod: $(kc logs gcs)"
  [ "$(gcs_object pods/d/g.txt)" = gcs ] || die "pods/d/g.txt is not in the GCS bucket"
}

scenario_read_only() {
  log "scenario: read-only PV: reads work, writes fail with EROFS"
  apply readonly.yaml
  wait_until "PVC e2e-readonly to bind" 60 pvc_bound e2e-readonly
  run_pod readonly "$(claim e2e-readonly)" 'cat /data/hello.txt || exit 2
if err=$(sh -c "echo x > /data/nope.txt" 2>&1); then echo "the write succeeded"; exit 1; fi
echo "$err"
case "$err" in *"Read-only file system"*) exit 0 ;; esac
exit 1'
  wait_succeeded readonly 120
  kc logs readonly | grep -q "Read-only file system" || die "readonly pod: $(kc logs readonly)"
  ! bucket_object static/nope.txt >/dev/null || die "a read-only volume wrote static/nope.txt"
}

scenario_unmount_on_delete() {
  log "scenario: deleting the pods unmounts their volumes"
  delete_pods writer reader inline gcs readonly
  assert_node_clean
}

MOTO=http://$LAB_IP:$E2E_MOTO_PORT # moto: STS and an S3 that takes its credentials
ROLE=arn:aws:iam::123456789012:role/e2e-trainer
moto_py() { in_ns env AWS_EC2_METADATA_DISABLED=true python3 - "$MOTO" "$@"; }
token_file() { find "$LAB/state/tokens" -type f 2>/dev/null | head -1; }
token_rewritten() { [ "$(stat -c %Y.%s "$1" 2>/dev/null)" != "$2" ]; }
failed_mount_says() { kc get events --field-selector "involvedObject.name=$1,reason=FailedMount" -o 'jsonpath={.items[*].message}' | grep -q "$2"; }

scenario_pod_identity() {
  log "scenario: pod identity: the pod's ServiceAccount token assumes the role of its IRSA annotation at STS (moto); S3 requests are signed with what STS issued"
  moto_py <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
s3.create_bucket(Bucket="pod-identity")
PY
  # Recording is on from moto's start: keep only what follows.
  in_ns curl -sf -X POST "$MOTO/moto-api/recorder/reset-recording" >/dev/null
  in_ns curl -sf -X POST "$MOTO/moto-api/recorder/start-recording" >/dev/null
  kc create serviceaccount trainer >/dev/null
  kc annotate serviceaccount trainer "eks.amazonaws.com/role-arn=$ROLE" >/dev/null
  kc create serviceaccount norole >/dev/null
  local volume="      csi:
        driver: $DRIVER
        volumeAttributes: {bucketName: pod-identity, endpointUrl: \"$MOTO\", stsEndpoint: \"$MOTO\", region: us-east-1}"
  run_pod_as irsa "  serviceAccountName: trainer" "$volume" 'echo trained > /data/model.txt && cat /data/model.txt && sleep 3600'
  wait_ready irsa 120
  wait_until "the irsa pod's output" 30 has_output kc logs irsa
  [ "$(kc logs irsa)" = trained ] || die "irsa pod: $(kc logs irsa)"
  # What moto saw: the pod's own token at STS for the annotated role, then every S3 request
  # signed with the temporary key STS issued (ASIA...) and its session token.
  in_ns curl -sf "$MOTO/moto-api/recorder/download-recording" >"$LAB/moto-recording.jsonl"
  python3 - "$LAB/moto-recording.jsonl" "$ROLE" <<'PY' || die "moto's recording does not show the pod identity chain"
import base64, json, sys, urllib.parse
reqs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def body(r):
    b = r.get("body") or ""
    return base64.b64decode(b).decode() if r.get("body_encoded") else b
sts = [urllib.parse.parse_qs(body(r)) for r in reqs if "AssumeRoleWithWebIdentity" in body(r)]
assert sts, "no AssumeRoleWithWebIdentity"
form = sts[0]
assert form["RoleArn"] == [sys.argv[2]], form["RoleArn"]
jwt = form["WebIdentityToken"][0].split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(jwt + "=" * (-len(jwt) % 4)))
assert claims["sub"] == "system:serviceaccount:default:trainer", claims["sub"]
assert "sts.amazonaws.com" in claims["aud"], claims["aud"]
s3 = [r for r in reqs if "/pod-identity" in r["url"]]
assert s3, "no S3 request"
for r in s3:
    h = {k.lower(): v for k, v in r["headers"].items()}
    auth = h.get("authorization", "")
    key = auth.split("Credential=")[1].split("/")[0] if "Credential=" in auth else ""
    assert key.startswith("ASIA") and "x-amz-security-token" in h, (r["method"], r["url"], key)
print(f"  STS: role {form['RoleArn'][0]}, token of {claims['sub']}; {len(s3)} S3 requests signed with STS keys", file=sys.stderr)
PY
  moto_py <<'PY' || die "model.txt is not in moto's bucket"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
assert s3.get_object(Bucket="pod-identity", Key="model.txt")["Body"].read() == b"trained\n"
PY
  # kubelet republishes the live volume (requiresRepublish) with its token: the token file
  # is rewritten for the same mount process, no remount.
  local file before pid
  file=$(token_file)
  [ -n "$file" ] || die "no pod token file under $LAB/state/tokens"
  # root's file, readable by the group of the mount's own user only
  local owner
  owner=$(stat -c '%a %u %g' "$file")
  [[ "$owner" =~ ^640\ 0\ 9[0-9]{8}$ ]] || die "pod token file is $owner, not 640 root and a mount's group"
  before=$(stat -c %Y.%s "$file")
  pid=$(mount_processes | tr '\n' ' ')
  sleep 1.1 # mtime granularity
  wait_until "kubelet to republish the volume with its token" 120 token_rewritten "$file" "$before"
  [ "$(mount_processes | tr '\n' ' ')" = "$pid" ] || die "the republish remounted ($pid -> $(mount_processes | tr '\n' ' '))"
  # A pod whose ServiceAccount names no role: a clear event, and never the node's identity.
  expect_warning norole FailedMount
  run_pod_as norole "  serviceAccountName: norole" "$volume" 'echo should-not > /data/nope.txt'
  wait_until "a FailedMount event for norole naming the missing annotation" 120 \
    failed_mount_says norole "default/norole has no eks.amazonaws.com/role-arn annotation"
  [ "$(pod_phase norole)" = Pending ] || die "norole is $(pod_phase norole)"
  delete_pods irsa norole
  assert_node_clean
}

# The running pods of the trainers Deployment; the count of whole reads a pod logged.
trainer_pods() { kc get pods -l app=trainers --field-selector status.phase=Running -o name | sed 's#^pod/##'; }
oks() { kc logs "$1" | grep -c '^ok' || true; }
oks_at_least() { (($(oks "$1") >= $2)); }
no_failed_reads() {
  local p
  for p in "$@"; do
    ! kc logs "$p" | grep -q FAILED || die "$p read wrong bytes or failed: $(kc logs "$p" | grep FAILED | head -3)"
  done
}
count() { grep -c . || true; }
pods_of_trainers() { [ "$(trainer_pods | count)" -eq "$1" ] && [ "$(kc get pods -l app=trainers -o name | count)" -eq "$1" ]; }
# The pid of the mount bound into N pods (from the plugin's root-only records).
shared_mount_pid() {
  python3 - "$LAB/state" "$1" <<'PY'
import glob, json, sys
state, n = sys.argv[1], int(sys.argv[2])
binds = [json.load(open(f)) for f in glob.glob(state + "/binds/*.json") if not f.endswith(".stage.json")]
for f in glob.glob(state + "/mounts/*.json"):
    r = json.load(open(f))
    if sum(b["mount"] == r["target"] for b in binds) == n:
        print(r["pid"])
PY
}
pid_replaced() { local now; now=$(shared_mount_pid "$2"); [ -n "$now" ] && [ "$now" != "$1" ] && [ "$now" != 0 ]; }

scenario_shared_mount() {
  log "scenario: pods of one ServiceAccount share a PV's mount (one process, a bind each); another ServiceAccount gets its own; a kill -9 and a pod leaving do not disturb the others"
  kc create serviceaccount evaluator >/dev/null
  kc annotate serviceaccount evaluator "eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/e2e-evaluator" >/dev/null
  apply irsa.yaml
  wait_until "PVC e2e-irsa to bind" 60 pvc_bound e2e-irsa
  local loop='n=0; while true; do if [ "$(cat /data/model.txt)" = trained ]; then n=$((n + 1)); echo "ok $n"; else echo FAILED; fi; sleep 0.1; done'
  kc apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: trainers, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: trainers}}
  template:
    metadata: {labels: {app: trainers}}
    spec:
      serviceAccountName: trainer
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: localhost/busybox:e2e
          imagePullPolicy: Never
          command: [sh, -c, '$loop']
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, persistentVolumeClaim: {claimName: e2e-irsa}}]
YAML
  wait_until "two trainer pods running" 120 pods_of_trainers 2
  local a b
  a=$(trainer_pods | sed -n 1p)
  b=$(trainer_pods | sed -n 2p)
  wait_until "$a reading" 120 oks_at_least "$a" 1
  wait_until "$b reading" 120 oks_at_least "$b" 1
  [ "$(mount_processes | count)" -eq 1 ] || die "two pods of one ServiceAccount run $(mount_processes | count) mount processes, not one"
  [ "$(pail_mounts | count)" -eq 3 ] || die "expected the shared mount and two binds: $(pail_mounts)"
  # Another ServiceAccount: a mount of its own.
  run_pod_as evaluator "  serviceAccountName: evaluator" "$(claim e2e-irsa)" "$loop"
  wait_ready evaluator 120
  wait_until "the evaluator reading" 60 oks_at_least evaluator 1
  [ "$(mount_processes | count)" -eq 2 ] || die "another ServiceAccount shares a mount ($(mount_processes | count) processes)"
  [ "$(pail_mounts | count)" -eq 5 ] || die "expected two mounts and three binds: $(pail_mounts)"
  # kill -9 of the shared process while both trainers read.
  expect_warning 'trainers-[^/]*' MountProcessDied
  local pid before_a before_b
  pid=$(shared_mount_pid 2)
  [ -n "$pid" ] || die "no mount bound into two pods"
  before_a=$(oks "$a")
  before_b=$(oks "$b")
  kill -9 "$pid"
  wait_until "a successor of the shared mount's process" 30 pid_replaced "$pid" 2
  wait_until "3 more reads by $a after kill -9" 60 oks_at_least "$a" $((before_a + 3))
  wait_until "3 more reads by $b after kill -9" 60 oks_at_least "$b" $((before_b + 3))
  no_failed_reads "$a" "$b" evaluator
  pid=$(shared_mount_pid 2)
  log "  shared: $a and $b bind one mount (successor pid $pid after kill -9); evaluator has its own; reads: $(oks "$a"), $(oks "$b"), $(oks evaluator)"
  # One trainer leaves: the other reads on, from the same process.
  kc scale deployment trainers --replicas=1 >/dev/null
  wait_until "one trainer left" 120 pods_of_trainers 1
  local left
  left=$(trainer_pods)
  before_a=$(oks "$left")
  wait_until "3 more reads by $left after the other left" 60 oks_at_least "$left" $((before_a + 3))
  no_failed_reads "$left" evaluator
  [ "$(shared_mount_pid 1 | grep -cx "$pid")" -eq 1 ] || die "the shared mount's process changed when a pod left"
  [ "$(pail_mounts | count)" -eq 4 ] || die "expected two mounts and two binds: $(pail_mounts)"
  kc delete deployment trainers --wait=true --timeout=120s >/dev/null
  delete_pods evaluator
  wait_until "the trainers' pods gone" 180 no_output kc get pods -l app=trainers -o name
  assert_node_clean
  kc delete pvc e2e-irsa --wait=true --timeout=60s >/dev/null
  kc delete pv e2e-irsa --wait=true --timeout=60s >/dev/null
}

scenario_non_root() {
  log "scenario: non-root pods (runAsUser 1000, fsGroup 1000) write, rename and delete; another uid gets EACCES"
  apply nonroot.yaml
  wait_until "PVC e2e-nonroot to bind" 60 pvc_bound e2e-nonroot
  local as_1000="  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000}"
  local work='set -e; echo a > /data/f; mkdir /data/d; mv /data/f /data/d/g; cat /data/d/g; rm /data/d/g; rmdir /data/d; echo kept > /data/kept; echo done'
  run_pod_as nonroot-pv "$as_1000" "$(claim e2e-nonroot)" "$work"
  run_pod_as nonroot-inline "$as_1000" "      csi:
        driver: $DRIVER
        volumeAttributes: {bucketName: pail-test, prefix: nonroot-inline/, endpointUrl: \"$S3_ENDPOINT\", mountOptions: \"uid=1000,gid=1000\"}
        nodePublishSecretRef: {name: e2e-s3}" "$work"
  wait_succeeded nonroot-pv 120
  wait_succeeded nonroot-inline 120
  [ "$(bucket_object nonroot/kept)" = kept ] || die "nonroot/kept is not in the bucket"
  [ "$(bucket_object nonroot-inline/kept)" = kept ] || die "nonroot-inline/kept is not in the bucket"
  run_pod_as stranger "  securityContext: {runAsUser: 2000, runAsGroup: 2000}" "$(claim e2e-nonroot)" 'cat /data/kept
if err=$(sh -c "echo x > /data/mine" 2>&1); then echo "the write succeeded"; exit 1; fi
echo "$err"
case "$err" in *"Permission denied"*) exit 0 ;; esac
exit 1'
  wait_succeeded stranger 120
  kc logs stranger | grep -q "Permission denied" || die "stranger: $(kc logs stranger)"
  ! bucket_object nonroot/mine >/dev/null || die "a stranger wrote nonroot/mine"
  delete_pods nonroot-pv nonroot-inline stranger
  assert_node_clean
}

reads_ok() { kc logs streamer | grep -c '^ok' || true; }
reads_at_least() { (($(reads_ok) >= $1)); }
mount_process_changed() { local now; now=$(mount_processes | tr '\n' ' '); [ -n "$now" ] && [ "$now" != "$1" ]; }
streamer_fine() {
  [ "$(pod_phase streamer)" = Running ] || { show_pod streamer; die "streamer stopped"; }
  ! kc logs streamer | grep FAILED || die "streamer read wrong bytes"
}

scenario_plugin_restart() {
  log "scenario: a pod reads and appends while its node plugin restarts, its mount process is killed (-9), and a helm upgrade changes the image"
  run_pod bigfile "$(claim e2e-static)" 'dd if=/dev/urandom of=/data/big.bin bs=1M count=64 2>/dev/null
md5sum < /data/big.bin > /data/big.md5 && cat /data/big.md5'
  wait_succeeded bigfile 180
  # Wrong bytes fail the pod; an error (EIO for a call in flight at a crash) is counted.
  run_pod streamer "$(claim e2e-static)" 'want=$(cat /data/big.md5)
n=0
rm -f /data/loop.log
while true; do
  got=$(md5sum < /data/big.bin) || { echo "error: read"; sleep 0.2; continue; }
  [ "$got" = "$want" ] || { echo "FAILED: $got"; exit 1; }
  echo "line $n" >> /data/loop.log || { echo "error: append"; sleep 0.2; continue; }
  n=$((n + 1)); echo "ok $n"
done'
  wait_ready streamer 120
  wait_until "streamer's first read" 120 reads_at_least 1
  local old pid before
  old=$(node_plugin_pod)
  pid=$(mount_processes | tr '\n' ' ')
  [ -n "$pid" ] || die "no mount process serves the streamer"
  # It runs unprivileged and filtered, in pail's own cgroup (node-wide limits).
  grep -Eq '^Uid:[[:space:]]*9[0-9]{8}[[:space:]]' "/proc/${pid% }/status" || die "the mount process does not run as a mount user of its own: $(grep Uid "/proc/${pid% }/status")"
  grep -q '^Seccomp:[[:space:]]*2' "/proc/${pid% }/status" || die "the mount process has no system-call filter"
  grep -q 'pail.slice/mount-' "/proc/${pid% }/cgroup" || die "the mount process is not in pail.slice: $(cat "/proc/${pid% }/cgroup")"
  # Operators see the volume through kubectl: its mount's counters on the plugin's metrics.
  wait_until "per-volume read counters of the streamer's volume" 60 volume_read_bytes e2e-static
  log "  metrics: $(plugin_metrics | grep '^pail_volume_read_bytes_total' | head -1)"
  before=$(reads_ok)
  # While no plugin is registered (this restart, the upgrades below), the kubelet's periodic
  # republish of running pods' volumes (requiresRepublish: tokens for pod identity) fails
  # once or twice and is retried; the mounts serve on meanwhile. The kubelet words it by
  # where the restart is: the driver not registered, or registered but its socket gone.
  expect_warning '[^/]+' FailedMount 'MountVolume.SetUp failed .* (not found in the list of registered CSI drivers|check for STAGE_UNSTAGE_VOLUME capability: rpc error: code = Unavailable desc = connection error: .*csi.sock: connect: no such file or directory)'
  kc delete pod -n kube-system "$old" --wait=true --timeout=180s >/dev/null
  wait_until "a new node plugin pod Ready and registered" 120 plugin_ready "$old"
  wait_until "3 more whole reads of big.bin" 120 reads_at_least $((before + 3))
  streamer_fine
  [ "$(mount_processes | tr '\n' ' ')" = "$pid" ] || die "the same version replaced the mount process ($pid -> $(mount_processes | tr '\n' ' '))"
  log "  plugin restart: streamer read big.bin $(reads_ok) times (${before} before), mount process $pid kept"
  # kill -9 of the mount process: the plugin starts a successor on the same connection.
  expect_warning streamer MountProcessDied
  before=$(reads_ok)
  kill -9 "${pid% }"
  wait_until "a successor mount process" 30 mount_process_changed "$pid"
  wait_until "3 more whole reads after kill -9" 120 reads_at_least $((before + 3))
  streamer_fine
  grep -q 'pail_mount_restarts_total 1' <<<"$(plugin_metrics)" || die "restarts not counted: $(plugin_metrics | grep restarts)"
  # ... and the pod's owner sees it in `kubectl describe pod`, the mount's log in the plugin's.
  wait_until "a MountProcessDied event on the streamer" 30 pod_event streamer MountProcessDied
  wait_until "a MountProcessReplaced event on the streamer" 30 pod_event streamer MountProcessReplaced
  wait_until "the successor's log lines in kubectl logs of the node plugin" 30 mount_log_in_plugin streamer
  log "  events: $(kc get events --field-selector involvedObject.name=streamer -o 'jsonpath={range .items[*]}{.reason}: {.message}; {end}' | grep -o 'MountProcess[^;]*;' | tr '\n' ' ')"
  log "  kubectl logs: $(kc logs -n kube-system "$(node_plugin_pod)" | grep 'pail::mount' | grep streamer | tail -1)"
  pid=$(mount_processes | tr '\n' ' ')
  log "  kill -9: successor $pid; streamer read big.bin $(reads_ok) times, $(kc logs streamer | grep -c '^error' || true) calls failed in flight"
  # An upgrade to another image: the new plugin hands every mount over to its own binary.
  old=$(node_plugin_pod)
  before=$(reads_ok)
  hm upgrade pail "$REPO/charts/pail" --namespace kube-system --reuse-values --set image.tag=e2e2 \
    --wait --timeout 120s >/dev/null
  wait_until "the upgraded node plugin Ready and registered" 120 plugin_ready "$old"
  wait_until "the mount handed over to the new version" 60 mount_process_changed "$pid"
  pid=$(mount_processes | tr '\n' ' ')
  grep -q 'pail e2e2' "/proc/${pid% }/exe" || die "the mount process $pid does not run the upgraded binary"
  wait_until "3 more whole reads after the upgrade" 120 reads_at_least $((before + 3))
  streamer_fine
  [ -n "$(pail_mounts)" ] || die "the mount is gone"
  log "  upgrade: mount process $pid runs e2e2; streamer read big.bin $(reads_ok) times"
  delete_pods streamer
  # Every append whose close succeeded is in the log, in order.
  run_pod loopcheck "$(claim e2e-static)" 'i=0; while read -r w k; do [ "$k" -ge "$i" ] || { echo "FAILED: $k after $i"; exit 1; }; i=$k; done < /data/loop.log; echo "lines $(wc -l < /data/loop.log)"'
  wait_succeeded loopcheck 120
  delete_pods loopcheck bigfile
  assert_node_clean
}

scenario_upgrade_uninstall() {
  log "scenario: helm upgrade with a changed value, a pod on the upgraded plugin, helm uninstall"
  local old
  old=$(node_plugin_pod)
  hm upgrade pail "$REPO/charts/pail" --namespace kube-system --reuse-values --set logLevel=debug \
    --wait --timeout 120s >/dev/null
  wait_until "the upgraded node plugin Ready and registered" 120 plugin_ready "$old"
  kc get ds -n kube-system pail-node -o 'jsonpath={.spec.template.spec.containers[0].args}' | grep -q -- --debug ||
    die "helm upgrade did not change the node plugin's args"
  run_pod upgraded "$(inline upgraded/)" 'echo after-upgrade > /data/x.txt && cat /data/x.txt'
  wait_succeeded upgraded 120
  [ "$(bucket_object upgraded/x.txt)" = after-upgrade ] || die "upgraded/x.txt is not in the bucket"
  delete_pods upgraded
  assert_node_clean
  hm uninstall pail --namespace kube-system --wait --timeout 240s >/dev/null
  wait_until "node plugin pods gone" 180 no_plugin_pods
  wait_until "the kubelet to drop the driver from CSINode" 60 driver_unregistered
  ! kc get csidriver "$DRIVER" >/dev/null 2>&1 || die "CSIDriver $DRIVER left after uninstall"
  local left node
  for node in "$LAB" "$LAB/$NODE_B"; do # node A's dirs, node B's
    left=$(find "$node/kubelet/plugins_registry" "$node/kubelet/plugins" -mindepth 1 -not -type d 2>/dev/null || true)
    [ -z "$left" ] || die "files left after uninstall: $left"
    left=$(find "$node/state/mounts" -name '*.json' 2>/dev/null; find "$node/state/cache" -mindepth 1 -maxdepth 1 2>/dev/null || true)
    [ -z "$left" ] || die "mount records left after uninstall: $left"
  done
  node_is_clean || die "node A not clean after uninstall"
  b_is_clean || die "node B not clean after uninstall"
}

# Warning Events a scenario causes on purpose: POD REASON [MESSAGE], extended regular
# expressions matched from the start of "POD/REASON: MESSAGE"; every other Warning Event on
# a pod fails the run.
EXPECTED_WARNINGS=()
expect_warning() { EXPECTED_WARNINGS+=("$1/$2: ${3:-}"); }

# Warning Events on pods that no scenario expected: a pod deleted normally, a volume
# unmounted as asked, a pod scheduled and started, get none.
unwanted_warnings() {
  local pat
  pat=$(IFS='|'; echo "${EXPECTED_WARNINGS[*]}")
  kc get events -A --field-selector type=Warning,involvedObject.kind=Pod \
    -o 'jsonpath={range .items[*]}{.involvedObject.name}/{.reason}: {.message}{"\n"}{end}' |
    { if [ -n "$pat" ]; then grep -Ev "^($pat)"; else cat; fi; } || true
}

run_scenarios() {
  # The lab runs no cluster DNS: the kubelet says so for the chart's host-network pods
  # (ClusterFirstWithHostNet, right on a real cluster) and falls back to the host's resolver.
  expect_warning 'pail-(node|controller)-[^/]*' MissingClusterDNS
  # The kubelet's own Secret and ConfigMap volumes (ServiceAccount tokens, the chart's
  # kube-api-access) when its watch of the API server is slow to start on a busy machine:
  # retried, and never pail's volume (a CSI volume fails with "kubernetes.io/csi: ...").
  expect_warning '[^/]+' FailedMount 'MountVolume.SetUp failed for volume "[a-z0-9-]+" : failed to sync (secret|configmap) cache: timed out waiting for the condition$'
  helm_install
  if [ "${PAIL_E2E_ONLY:-}" = two-node ]; then
    two_node_prerequisites
  else
    single_node_scenarios
  fi
  run_two_node_scenarios
  scenario_upgrade_uninstall
  local unwanted
  unwanted=$(unwanted_warnings)
  [ -z "$unwanted" ] || die "pods got Warning Events they should not have: $unwanted"
}

# Node A alone (node B joins after these).
single_node_scenarios() {
  scenario_static_pv
  assert_lab_listeners # with everything running
  scenario_inline
  scenario_gcs
  scenario_read_only
  scenario_unmount_on_delete
  scenario_pod_identity
  scenario_shared_mount
  scenario_non_root
  scenario_plugin_restart
}
