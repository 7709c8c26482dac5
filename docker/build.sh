#!/bin/sh
# The build step of docker/Dockerfile, also run by CI outside Docker so
# that the image's build is checked where no Docker engine is available.
# Builds the release binary and copies it to $1 (default: target/dist).
set -eu
cd "$(dirname "$0")/.."
out=${1:-target/dist}
cargo build --release --locked -p switchyard
mkdir -p "$out"
cp target/release/switchyard "$out/switchyard"
"$out/switchyard" --version
