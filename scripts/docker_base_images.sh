#!/usr/bin/env bash
# Local base images for machines that cannot pull from a registry (CI here).
#
#   local/python-base:bookworm  stands in for python:3.11-slim  (Dockerfile's BASE_IMAGE)
#   local/redis:bookworm        stands in for redis:7
#   local/postgres:bookworm     stands in for postgres:16 (PostgreSQL 15, same env contract:
#                               POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB, PGDATA)
#
# Each is a debootstrap'd Debian bookworm (minbase) plus the packages it needs, imported with
# `docker import`. docker-compose.ci.yml uses them. Idempotent: an image that exists is skipped,
# and each root file system is cached as a tarball under $DOCKER_BASE_CACHE (default
# .cache/docker-base, git-ignored) so a rerun with a fresh Docker data-root skips debootstrap.
#
# The host's CA bundle is copied into the python image and PIP_CERT/SSL_CERT_FILE point at it,
# so `pip install` inside `docker build` works behind a TLS-inspecting proxy. Normal users, who
# build FROM python:3.11-slim, never see this.
#
# Needs root (debootstrap) and a running Docker engine (DOCKER_HOST).
# Usage: scripts/docker_base_images.sh [--force]   (--force rebuilds images and tarballs)
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${DOCKER_BASE_CACHE:-.cache/docker-base}
HOST_CA=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
trap 'rm -rf "$CACHE"/rootfs.* "$CACHE"/*.tar.tmp' EXIT  # half-built root file systems

if ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

# rootfs_tarball NAME "PKG,PKG" CUSTOMISE_FUNCTION -> prints the tarball path
rootfs_tarball() {
  local name=$1 include=$2 customise=$3 tarball="$CACHE/$1-$SUITE.tar"
  if [ "$FORCE" = 1 ] || [ ! -s "$tarball" ]; then
    local root
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    chmod 755 "$root"  # mktemp made it 0700: the image's / must be traversable by non-root users
    echo "debootstrap $name ($include)" >&2
    debootstrap --variant=minbase --include="$include" "$SUITE" "$root" "$MIRROR" \
      >"$CACHE/$name-debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/$name-debootstrap.log" >&2; return 1; }
    "$customise" "$root"
    # smaller images: no apt lists, caches, docs or man pages
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  echo "$tarball"
}

customise_python() {
  local root=$1
  if [ -s "$HOST_CA" ]; then cp "$HOST_CA" "$root/etc/ssl/certs/ca-certificates.crt"; fi
}

customise_redis() {
  local root=$1
  mkdir -p "$root/data" && chroot "$root" chown redis:redis /data
  # Like the official image: `redis-server ARGS` or just `--flag ...`; reachable from other
  # containers (no protected mode, no config file).
  cat >"$root/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ]; then
  case "${2:-}" in -v|--version|-h|--help) ;; *) set -- "$@" --protected-mode no ;; esac
fi
exec "$@"
EOF
  chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
}

customise_postgres() {
  local root=$1
  # no Debian-style cluster: the entrypoint makes one in PGDATA on first start
  rm -rf "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15
  mkdir -p "$root/var/lib/postgresql/data" "$root/var/run/postgresql"
  chroot "$root" chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
  chmod 700 "$root/var/lib/postgresql/data"
  # The subset of the official image's contract that compose uses: initdb on first start with
  # POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, password auth over TCP, listen on all.
  cat >"$root/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  user="${POSTGRES_USER:-postgres}"
  db="${POSTGRES_DB:-$user}"
  pw=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pw" -E UTF8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pw"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\" OWNER \"$user\";" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "initialised $PGDATA (user $user, database $db)"
fi
exec "$@"
EOF
  chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

build() {  # build IMAGE NAME INCLUDE CUSTOMISE docker-import-changes...
  local image=$1 name=$2 include=$3 customise=$4
  shift 4
  if [ "$FORCE" = 0 ] && image_exists "$image"; then
    echo "$image: exists, skipped"
    return
  fi
  local start=$SECONDS tarball args=()
  tarball=$(rootfs_tarball "$name" "$include" "$customise")
  for change in "$@"; do args+=(-c "$change"); done
  docker import "${args[@]}" "$tarball" "$image" >/dev/null
  echo "$image: built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
}

PG=/usr/lib/postgresql/15/bin
build local/python-base:$SUITE python "python3,python3-venv,ca-certificates,passwd" customise_python \
  'ENV LANG=C.UTF-8' \
  'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  'CMD ["python3"]'
build local/redis:$SUITE redis "redis-server" customise_redis \
  'USER redis' 'WORKDIR /data' 'EXPOSE 6379' \
  'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["redis-server"]'
build local/postgres:$SUITE postgres "postgresql-15" customise_postgres \
  "ENV PATH=$PG:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  'ENV PGDATA=/var/lib/postgresql/data' 'ENV LANG=C.UTF-8' \
  'USER postgres' 'EXPOSE 5432' \
  'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["postgres"]'
