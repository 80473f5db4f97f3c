#!/usr/bin/env bash
# Build the cot-proxy Docker image: the Livepeer gateway proxy's build.sh, same variables.
#
#   ./build.sh                                              # local build, tag: latest
#   TAG=v1.0.0 ./build.sh                                   # custom tag
#   REGISTRY=myregistry.example.com TAG=v1.0.0 ./build.sh   # with registry prefix
#   REGISTRY=myregistry.example.com PUSH=true ./build.sh    # build and push
#
# IMAGE_NAME (default cot-proxy) names the repository; DOCKER (default docker) is the client.
# The build context is this script's folder, wherever it is run from. An empty variable
# counts as unset; PUSH is true or false (anything else stops before building).
set -euo pipefail

TAG="${TAG:-latest}"
PUSH="${PUSH:-false}"
REGISTRY="${REGISTRY:-}"
REGISTRY="${REGISTRY%/}"
IMAGE_NAME="${IMAGE_NAME:-cot-proxy}"
DOCKER="${DOCKER:-docker}"

case "$(printf '%s' "$PUSH" | tr '[:upper:]' '[:lower:]')" in
  true) PUSH=true ;;
  false) PUSH=false ;;
  *) echo "build.sh: PUSH=$PUSH: use true or false" >&2; exit 2 ;;
esac
if [[ ! "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
  echo "build.sh: TAG=$TAG: not a valid image tag (letters, digits, _ . -; at most 128)" >&2
  exit 2
fi

if [ -n "$REGISTRY" ]; then
  IMAGE="${REGISTRY}/${IMAGE_NAME}:${TAG}"
else
  IMAGE="${IMAGE_NAME}:${TAG}"
fi

cd "$(dirname "$0")"

echo "==> Building ${IMAGE}"
"$DOCKER" build -t "$IMAGE" .
echo ""
echo "Image built successfully: ${IMAGE}"

if [ "$PUSH" = "true" ]; then
  echo ""
  echo "==> Pushing ${IMAGE}"
  "$DOCKER" push "$IMAGE"
  echo ""
  echo "Image pushed successfully."
fi
