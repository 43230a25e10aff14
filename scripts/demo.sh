#!/usr/bin/env bash
# Zero-setup demo: build pail, make a local directory bucket with a few files, and mount it
# (the embedded file:// backend, no server needed). Stop with: umount /tmp/pail-demo/mnt
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --locked
demo=${PAIL_DEMO_DIR:-/tmp/pail-demo}
mkdir -p "$demo/bucket/datasets/mnist" "$demo/mnt"
if mountpoint -q "$demo/mnt"; then umount "$demo/mnt"; fi
echo "hello from a bucket" >"$demo/bucket/README.txt"
head -c 1048576 /dev/urandom >"$demo/bucket/datasets/mnist/train-00000.bin"
./target/release/pail mount "file://$demo/bucket" "$demo/mnt" --background
cat <<MSG

pail is serving file://$demo/bucket at $demo/mnt. Try:
  ls -lR $demo/mnt
  cat $demo/mnt/README.txt
  cp /etc/os-release $demo/mnt/ && ls -l $demo/bucket
  mkdir $demo/mnt/new && rmdir $demo/mnt/new
  umount $demo/mnt
For S3: AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… ./target/release/pail mount s3://bucket/prefix/ /mnt/x
MSG
