#!/usr/bin/env bash
# Run the image the way the chart runs it, without a container runtime: a read-only root
# filesystem (a read-only bind mount of the image's root, so writes fail with EROFS even for root),
# the image's USER (10001:10001, no supplementary groups), no capabilities and no_new_privs
# (allowPrivilegeEscalation: false), a tmpfs on /tmp (the chart's emptyDir), its own PID namespace.
# The network is the host's.
#
# Usage: image/run.sh [--entrypoint PROGRAM] [-v HOST_PATH:PATH]... IMAGE [ARG...]
#   As `docker run`: the image's ENTRYPOINT (or PROGRAM) runs with ARGs (default: its CMD) and its
#   ENV. -v mounts read-only; PATH must exist in the image or lie under /tmp. IMAGE may also be a
#   buildah container (`buildah from IMAGE`), reused as it is: quicker, since with vfs every new
#   container is a copy of the whole image. Nothing a command does is kept (the root is read-only).
# Environment: STORAGE_DRIVER [vfs], as for image/build.sh. Needs root (mount namespaces).
set -euo pipefail

STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
buildah() { command buildah --storage-driver "$STORAGE_DRIVER" "$@"; }

entrypoint=()
volumes=()
while [ $# -gt 0 ]; do
    case $1 in
        --entrypoint) entrypoint=("$2") && shift 2 ;;
        -v) volumes+=("$2") && shift 2 ;;
        -*) echo "image/run.sh: unknown option $1" >&2 && exit 2 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { echo "usage: $0 [--entrypoint PROGRAM] [-v HOST_PATH:PATH]... IMAGE [ARG...]" >&2; exit 2; }
image=$1
shift

type=image
buildah inspect --type container "$image" >/dev/null 2>&1 && type=container
config() { buildah inspect --type "$type" --format "$1" "$image"; }
user=$(config '{{.OCIv1.Config.User}}')
mapfile -t env < <(config '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' | grep .)
[ ${#entrypoint[@]} -gt 0 ] || mapfile -t entrypoint < <(config '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}' | grep .)
args=("$@")
[ $# -gt 0 ] || mapfile -t args < <(config '{{range .OCIv1.Config.Cmd}}{{println .}}{{end}}' | grep .)
[[ $user =~ ^[0-9]+:[0-9]+$ ]] || { echo "image/run.sh: USER is '$user', not numeric uid:gid" >&2; exit 1; }

if [ "$type" = container ]; then
    container=$image
else
    container=$(buildah from --quiet --pull=false "$image")
    trap 'buildah rm "$container" >/dev/null' EXIT
fi
rootfs=$(buildah mount "$container")

# In a new mount and PID namespace, as root: build the read-only view, then chroot into it as
# $user. setpriv keeps only the capabilities chroot needs to get there; switching to a non-zero
# uid then drops them all, and no_new_privs stops setuid binaries from taking them back.
# shellcheck disable=SC2016 # expanded by the inner shell
setup='
set -euo pipefail
rootfs=$1 user=$2 nvolumes=$3 nenv=$4
shift 4
root=$(mktemp -d)
mount --bind "$rootfs" "$root"
mount -o remount,bind,ro "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o nosuid,mode=755 tmpfs "$root/dev"
for device in null zero full random urandom; do
    touch "$root/dev/$device" && mount --bind "/dev/$device" "$root/dev/$device"
done
for ((i = 0; i < nvolumes; i++)); do
    source=${1%%:*} target=$root/${1#*:}
    shift
    [ -d "$source" ] && mkdir -p "$target" || { mkdir -p "$(dirname "$target")" && touch "$target"; }
    mount --bind "$source" "$target" && mount -o remount,bind,ro "$target"
done
env=("${@:1:nenv}")
shift "$nenv"
cd /
exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all,+sys_chroot,+setuid,+setgid -- \
    env -i "${env[@]}" chroot --userspec="$user" --groups="${user#*:}" "$root" "$@"
'
set +e
unshare --mount --pid --fork --propagation private -- bash -c "$setup" run.sh \
    "$rootfs" "$user" "${#volumes[@]}" "${#env[@]}" "${volumes[@]}" "${env[@]}" "${entrypoint[@]}" "${args[@]}"
status=$?
set -e
exit $status
