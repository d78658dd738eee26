#!/usr/bin/env bash
# Make a Debian base image from this machine's own configured package sources, for engines that cannot
# pull from a registry. Needs root (to install mmdebstrap when missing) and a Docker engine. Idempotent:
# an existing image of the same tag is reused.
set -euo pipefail

suite=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")}
tag=${BASE_TAG:-raftd-base:$suite}

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag exists; reusing it"
    exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "installing mmdebstrap on this host (apt-get install mmdebstrap): it builds $tag from this host's package sources"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi

# The host's own sources file is the mirror argument: no mirror name is written here.
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list
[ -f "$sources" ] || { echo "no apt sources found on this host" >&2; exit 1; }

echo "building $tag from $sources (suite $suite)"
mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,ca-certificates \
    --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$suite" - "$sources" |
    docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        - "$tag" >/dev/null
echo "built $tag"
