#!/usr/bin/env bash
# Builds the Docker image, and runs it once to print its version. CI must
# not depend on Docker, so this succeeds with a notice, doing nothing,
# when docker is missing, its daemon does not answer, or the network is
# not there (a base image cannot be pulled, Go modules cannot be fetched).
# Any other failure of the build fails.
set -euo pipefail
cd "$(dirname "$0")/.."
skip() { echo "docker image: skipped: $*" >&2; exit 0; }

command -v docker >/dev/null || skip "docker is not installed"
timeout 20 docker info >/dev/null 2>&1 || skip "the docker daemon does not answer"
for image in $(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile); do
  timeout 300 docker pull -q "$image" >/dev/null 2>&1 || skip "cannot pull $image (no registry access?)"
done
tag="memcachedlock:${VERSION:-dev}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! docker build --build-arg VERSION="${VERSION:-}" --build-arg COMMIT="${COMMIT:-unknown}" -t "$tag" . >"$log" 2>&1; then
  if grep -qE 'proxy.golang.org|dial tcp|i/o timeout|TLS handshake|no such host' "$log"; then
    skip "the build could not fetch Go modules (no network?)"
  fi
  cat "$log" >&2
  exit 1
fi
docker run --rm "$tag" --version
echo "docker image: built $tag" >&2
