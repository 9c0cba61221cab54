#!/usr/bin/env bash
# Build a stand-in for the CUDA base image where no container registry is reachable (CI).
#
# `debootstrap` lays out a minimal Debian into a folder and `docker import` turns it into an
# image, so the shared image can be built with `--build-arg BASE_IMAGE=labs-standin-base:<suite>`.
# The real default base (nvidia/cuda, pinned by digest) stays in images/cuda/Dockerfile.
#
# Usage: images/standin/build.sh [TAG]   (default: labs-standin-base:bookworm)
#        STANDIN_ARCH=arm64 images/standin/build.sh labs-standin-base:bookworm-arm64
#   STANDIN_ARCH: a Debian architecture other than the host's (arm64: the Ascend image's Kunpeng hosts);
#   debootstrap runs its second stage through QEMU (qemu-user-static's binfmt handler must be registered).
# Needs: root, debootstrap, a Docker engine. Idempotent: an existing TAG is kept.
set -euo pipefail
tag=${1:-labs-standin-base:bookworm}
suite=${STANDIN_SUITE:-bookworm}
mirror=${STANDIN_MIRROR:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}
arch=${STANDIN_ARCH:-}

if "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "stand-in base $tag already present"; exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
root=$(mktemp -d /tmp/standin.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap ${arch:+--arch="$arch"} --variant=minbase --components=main "$suite" "$root" "$mirror"
# Same apt sources a Debian image would carry, including security updates.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SOURCES
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
if [ -z "$arch" ] || [ "$arch" = "$(dpkg --print-architecture)" ]; then
  tar -C "$root" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$tag"
else
  # `docker import --platform` is ignored by Docker 20.10: an image FROM scratch carries the architecture.
  context=$(mktemp -d /tmp/standin-ctx.XXXXXX)
  trap 'rm -rf "$root" "$context"' EXIT
  tar -C "$root" -cf "$context/rootfs.tar" .
  printf 'FROM scratch\nADD rootfs.tar /\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nCMD ["/bin/bash"]\n' \
    >"$context/Dockerfile"
  DOCKER_BUILDKIT=1 "$docker" build -q --platform "linux/$arch" -t "$tag" "$context"
fi
echo "built stand-in base $tag"
