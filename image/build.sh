#!/usr/bin/env bash
# Build the Legation image with buildah, offline from uv.lock. Three steps, each cached under
# build/image/ and redone only when its inputs change:
#
#   wheelhouse  the runtime subset of uv.lock (`uv export --no-dev`, with hashes) downloaded as wheels
#               for the image's platform into build/image/wheels/, and legation's own wheel in
#               build/image/legation/. The Dockerfile installs from these, with no index.
#   base        only when PYTHON_IMAGE is unset: a Debian bookworm root filesystem with python3 made by
#               mmdebstrap (build/image/base/*.tar), imported into buildah as localhost/legation-base.
#               With PYTHON_IMAGE set (e.g. python:3.11-slim-bookworm), that image is used instead.
#   image       `buildah build` of the Dockerfile (chroot isolation, layers cached).
#
# Usage: image/build.sh [wheelhouse|base|image]        (default: image; `image` does all three)
# Environment (defaults in brackets):
#   IMAGE [localhost/legation:dev]   tag of the result
#   PYTHON_IMAGE [the mmdebstrap base]   base image of both stages; must be Debian bookworm, Python 3.11
#   IMAGE_ARCHIVE []                 also write the image there as a docker-archive (docker load, kind load)
#   VENV [.venv]                     the dev virtualenv (`make venv`): its uv and pip are used
#   ARCH [uname -m]                  x86_64 or aarch64
#   DEBIAN_MIRROR [http://deb.debian.org/debian]
#   DEBIAN_SECURITY_MIRROR [http://deb.debian.org/debian-security]
#   STORAGE_DRIVER [vfs]             buildah's storage driver (vfs works everywhere, overlay is faster)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/legation:dev}
VENV=${VENV:-.venv}
ARCH=${ARCH:-$(uname -m)}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
OUT=build/image
# What the image runs: Debian bookworm (glibc 2.36) and CPython 3.11, in both the Debian base and
# the official python:3.11-slim-bookworm.
SUITE=bookworm
GLIBC_MINOR=36
PY_VERSION=3.11

# Every buildah call names the storage driver (buildah ignores $STORAGE_DRIVER). Storage that
# already holds images of another driver refuses it: then set STORAGE_DRIVER to that driver.
buildah() { command buildah --storage-driver "$STORAGE_DRIVER" "$@"; }

log() { echo "image/build.sh: $*" >&2; }

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { log "$tool is not installed (apt-get install $tool)"; exit 1; }
    done
}

# The wheel platform tags the image's glibc accepts: manylinux_2_17 .. manylinux_2_36 (and the
# manylinux2014/2010/1 aliases, which pip expands from manylinux2014).
platform_args() {
    local minor
    for ((minor = GLIBC_MINOR; minor >= 17; minor--)); do
        printf -- '--platform=manylinux_2_%d_%s\n' "$minor" "$ARCH"
    done
    printf -- '--platform=manylinux2014_%s\n' "$ARCH"
}

# build/image/wheels: requirements.txt (the lock's runtime subset, hashed) and exactly its wheels.
# Downloaded again only when requirements.txt changes; pip's cache makes that quick.
# pip evaluates environment markers against the host's Python, not --python-version (the host may
# run 3.11.7 where `python_full_version < '3.11.3'` is false, Debian's python3 is 3.11.2), so the
# download list drops the markers: every package of the subset is fetched, and pip in the image
# picks what its interpreter needs.
dependency_wheels() {
    local dir=$OUT/wheels tmp
    tmp=$(mktemp)
    "$VENV/bin/uv" export -q --frozen --no-dev --no-emit-project --format requirements-txt >"$tmp"
    if cmp -s "$tmp" "$dir/requirements.txt" && [ -f "$dir/.complete" ]; then
        rm -f "$tmp"
        log "wheels: up to date with uv.lock ($(find "$dir" -name '*.whl' | wc -l) wheels)"
        return
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    mv "$tmp" "$dir/requirements.txt"
    local -a platforms
    mapfile -t platforms < <(platform_args)
    log "wheels: downloading the runtime subset of uv.lock for cp${PY_VERSION/./}/$ARCH"
    "$VENV/bin/pip" download -q --disable-pip-version-check --require-hashes --no-deps \
        --only-binary=:all: --implementation=cp --python-version="$PY_VERSION" \
        --abi="cp${PY_VERSION/./}" "${platforms[@]}" -r <(sed -E 's/ ; [^\\]*//' "$dir/requirements.txt") -d "$dir"
    touch "$dir/.complete"
}

# build/image/legation: legation's own wheel, rebuilt every time (it is the code under test), with
# fixed timestamps: the same sources give the same bytes, and buildah reuses the layers built from
# it. setuptools stages files in build/lib: cleared first, so that a deleted module never ships.
project_wheel() {
    local dir=$OUT/legation
    rm -rf "$dir" build/lib build/bdist.*
    SOURCE_DATE_EPOCH=315532800 "$VENV/bin/uv" build -q --wheel --out-dir "$dir"
    rm -f "$dir/.gitignore"
    log "legation wheel: $(basename "$dir"/legation-*.whl)"
}

wheelhouse() {
    [ -x "$VENV/bin/uv" ] || { log "no $VENV/bin/uv: run make venv first"; exit 1; }
    dependency_wheels
    project_wheel
}

# The mmdebstrap options and mirrors; their hash names the tarball and the base image, so that a
# change to any of them builds a new base.
base_options() {
    printf '%s\n' --variant=minbase --include=python3,python3-venv,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' "--architectures=$(dpkg_arch)"
}

base_mirrors() {
    printf '%s\n' "deb $DEBIAN_MIRROR $SUITE $SUITE-updates main" \
        "deb $DEBIAN_SECURITY_MIRROR $SUITE-security main"
}

dpkg_arch() {
    case $ARCH in
        x86_64) echo amd64 ;;
        aarch64) echo arm64 ;;
        *) log "unsupported ARCH $ARCH" && exit 1 ;;
    esac
}

# Prints the base image's name; builds it first unless buildah already has it.
base() {
    need mmdebstrap buildah
    local key name tarball
    key=$( (base_options && echo "$SUITE" && base_mirrors) | sha256sum | cut -c1-12)
    name=localhost/legation-base:$SUITE-$key
    tarball=$OUT/base/$SUITE-$key.tar
    if buildah inspect --type image "$name" >/dev/null 2>&1; then
        log "base: $name (cached)"
        echo "$name"
        return
    fi
    if [ ! -f "$tarball" ]; then
        mkdir -p "$OUT/base"
        find "$OUT/base" -name '*.tar*' -delete
        local -a options mirrors
        mapfile -t options < <(base_options)
        mapfile -t mirrors < <(base_mirrors)
        log "base: mmdebstrap $SUITE with python3 into $tarball"
        mmdebstrap -q "${options[@]}" "$SUITE" "$OUT/base/partial.tar" "${mirrors[@]}"
        mv "$OUT/base/partial.tar" "$tarball"
    fi
    log "base: importing $tarball as $name"
    local container
    container=$(buildah from --quiet scratch)
    buildah add --quiet "$container" "$tarball" / >/dev/null
    buildah config --cmd /bin/bash --env LANG=C.UTF-8 \
        --label org.opencontainers.image.description="Debian $SUITE with python3 (mmdebstrap)" "$container"
    buildah commit --quiet --rm "$container" "$name" >/dev/null
    echo "$name"
}

image() {
    need buildah
    wheelhouse
    local base_image=${PYTHON_IMAGE:-} pull=true
    if [ -z "$base_image" ]; then
        base_image=$(base)
        pull=false  # a local image: never look for it in a registry
    fi
    log "image: buildah build $IMAGE from $base_image (storage driver $STORAGE_DRIVER)"
    local -a build=(build --quiet --isolation chroot --layers --pull="$pull" \
        --build-arg PYTHON_IMAGE="$base_image" -f Dockerfile)
    # The build stage gets a name of its own, then the image; what an earlier build left without
    # a name (vfs stores every layer whole) goes, and the named stage and its parents stay as the
    # cache for the next build.
    buildah "${build[@]}" --target build -t "$IMAGE-build" . >/dev/null
    buildah "${build[@]}" -t "$IMAGE" . >/dev/null
    buildah rmi --prune >/dev/null
    if [ -n "${IMAGE_ARCHIVE:-}" ]; then
        rm -f "$IMAGE_ARCHIVE"
        buildah push --quiet "$IMAGE" "docker-archive:$IMAGE_ARCHIVE:$IMAGE"
        log "image: written to $IMAGE_ARCHIVE"
    fi
    log "image: $IMAGE $(buildah images --format '{{.ID}} {{.Size}}' "$IMAGE")"
}

case ${1:-image} in
    wheelhouse) wheelhouse ;;
    base) base >/dev/null ;;
    image) image ;;
    *) log "usage: $0 [wheelhouse|base|image]" && exit 2 ;;
esac
