#!/usr/bin/env bash
# `make image`: build the raftd image in whichever world this machine is in.
#   - BASE_IMAGE set: use it.
#   - else an official python:3.11-slim already present locally, or raftd-base:SUITE already built: reuse it.
#   - else, on a Debian host, build raftd-base:SUITE from the host's own package sources (no registry).
#   - else leave the Dockerfile's default base, which the engine pulls from its registry.
# The Python packages always come from a wheelhouse made here on the host, so the build itself needs no
# network.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
image=${IMAGE:-raftd:latest}
suite=${SUITE:-$( (. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || true)}

base=${BASE_IMAGE:-}
if [ -z "$base" ]; then
    if docker image inspect python:3.11-slim >/dev/null 2>&1; then
        base=python:3.11-slim
    elif [ -n "$suite" ] && docker image inspect "raftd-base:$suite" >/dev/null 2>&1; then
        base=raftd-base:$suite
    elif [ -n "$suite" ] && { command -v mmdebstrap >/dev/null 2>&1 || command -v apt-get >/dev/null 2>&1; }; then
        deploy/base-image.sh
        base=raftd-base:$suite
    fi
fi

# The base's Python decides which wheels fit.
pyver=$(docker run --rm --entrypoint python3 "${base:-python:3.11-slim}" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

rm -rf deploy/wheelhouse
mkdir -p deploy/wheelhouse
"$python" -m pip wheel --quiet --no-deps --wheel-dir deploy/wheelhouse .
"$python" -m pip download --quiet --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --dest deploy/wheelhouse deploy/wheelhouse/raftd-*.whl

args=(--tag "$image" --rm --force-rm)
[ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
previous=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
# The classic builder never pulls a FROM image that exists locally; BuildKit needs a plugin we may lack.
DOCKER_BUILDKIT=0 docker build --quiet "${args[@]}" . >/dev/null
# Leave nothing untagged behind: the build stage's image (with its layers), and the image the tag
# named before, unless a container still uses it.
docker image prune --force --filter label=org.raftd.stage=build >/dev/null
current=$(docker image inspect --format '{{.Id}}' "$image")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || echo "the previous $image (${previous#sha256:}) is still in use; left in place"
fi
echo "built $image on ${base:-the default base}"
