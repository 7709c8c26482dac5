#!/usr/bin/env bash
# Installs what the driver suites in tests/tests/e2e/drivers.rs need, where
# that test looks for it. Idempotent: a step whose inputs have not changed
# since its last success is skipped. Run by .ci/run before the tests.
#
#   tests/drivers/.venv/              Python venv: psycopg2-binary, asyncpg
#   tests/drivers/.suites/<sdist>/    the tests/ that ship in their sdists
#   tests/drivers/node/node_modules/  pg and friends for node/conformance.js
#   target/drivers/tokio-postgres/    tokio-postgres's own tests/, built
#
# Everything comes from the package registries through their own clients
# (apt-get, pip, npm, cargo).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

# The sdists whose tests/ we run; same versions as python/requirements.txt.
SDISTS=(psycopg2==2.9.10 asyncpg==0.32.0)

log() { echo "drivers/setup: $*"; }

# A step's stamp holds a hash of its inputs; equal hash = nothing to do.
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
inputs_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- Debian packages -------------------------------------------------------
packages=()
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
# hstore, citext and ltree, which tokio-postgres's type tests use.
sharedir="$(pg_config --sharedir 2>/dev/null || echo /usr/share/postgresql/15)"
[ -f "$sharedir/extension/hstore.control" ] || packages+=(postgresql-contrib)
if [ ${#packages[@]} -gt 0 ]; then
  log "apt-get install ${packages[*]}"
  apt-get update -qq
  apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# --- Python: venv with the drivers, and the sdists' test suites -------------
venv="$here/.venv"
want="$(inputs_hash "$here/python/requirements.txt")"
if ! stamp_ok "$venv/.stamp" "$want"; then
  log "creating $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/python/requirements.txt"
  echo "$want" >"$venv/.stamp"
fi

suites="$here/.suites"
mkdir -p "$suites"
for spec in "${SDISTS[@]}"; do
  name="${spec%%==*}"
  version="${spec##*==}"
  dir="$suites/$name-$version"
  [ -d "$dir/tests" ] && continue
  log "downloading the $spec sdist for its tests/"
  tmp="$(mktemp -d)"
  "$venv/bin/pip" download -q --disable-pip-version-check --no-binary :all: --no-deps \
    -d "$tmp" "$spec"
  rm -rf "$dir.partial"
  mkdir -p "$dir.partial"
  tar -xzf "$tmp"/*.tar.gz -C "$dir.partial" --strip-components=1 "$name-$version/tests"
  rm -rf "$tmp"
  mv "$dir.partial" "$dir"
done

# --- Node: pg and friends ----------------------------------------------------
node_dir="$here/node"
want="$(inputs_hash "$node_dir/package.json" "$node_dir/package-lock.json")"
if ! stamp_ok "$node_dir/node_modules/.stamp" "$want"; then
  log "npm ci in $node_dir"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$node_dir/node_modules/.stamp"
fi

# --- Rust: tokio-postgres's own tests, from the crate cargo already has ------
# The suite is copied from the tokio-postgres source the workspace locks, with
# its hard-coded port made configurable (rust/prepare_suite.py), and built
# once; the e2e test only runs the binary.
crate_dir="$root/target/drivers/tokio-postgres"
manifest="$(cd "$root" && cargo metadata --format-version 1 |
  python3 -c 'import json, sys
m = json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "tokio-postgres"))')"
src="$(dirname "$manifest")"
want="$(echo "$src" | cat - "$here/rust/Cargo.toml.in" "$here/rust/prepare_suite.py" "$root/Cargo.lock" |
  sha256sum | cut -d' ' -f1)"
if ! stamp_ok "$crate_dir/.stamp" "$want" || [ ! -x "$(cat "$crate_dir/test-binary" 2>/dev/null)" ]; then
  log "building tokio-postgres's tests from $src"
  python3 "$here/rust/prepare_suite.py" "$src" "$crate_dir" "$here/rust/Cargo.toml.in" "$root/Cargo.lock"
  (cd "$crate_dir" && CARGO_TARGET_DIR="$crate_dir/target" cargo test --no-run --test test \
    --message-format=json-render-diagnostics) >"$crate_dir/build.json"
  python3 -c 'import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "test" and m.get("executable"):
        print(m["executable"])' "$crate_dir/build.json" >"$crate_dir/test-binary"
  echo "$want" >"$crate_dir/.stamp"
fi
log "ready"
