#!/usr/bin/env bash
# Build a stand-in for the CUDA base image where no container registry is reachable (CI).
#
# `debootstrap` lays out a minimal Debian into a folder and `docker import` turns it into an
# image, so the shared image can be built with `--build-arg BASE_IMAGE=labs-standin-base:<suite>`.
# The real default base (nvidia/cuda, pinned by digest) stays in images/cuda/Dockerfile.
#
# Usage: images/standin/build.sh [TAG]   (default: labs-standin-base:bookworm)
# Needs: root, debootstrap, a Docker engine. Idempotent: an existing TAG is kept.
set -euo pipefail
tag=${1:-labs-standin-base:bookworm}
suite=${STANDIN_SUITE:-bookworm}
mirror=${STANDIN_MIRROR:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}

if "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "stand-in base $tag already present"; exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
root=$(mktemp -d /tmp/standin.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --components=main "$suite" "$root" "$mirror"
# Same apt sources a Debian image would carry, including security updates.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SOURCES
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$docker" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$tag"
echo "built stand-in base $tag"
