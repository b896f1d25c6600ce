#!/bin/sh
# Entry point of the hhh image: turn secret files into environment variables, then run the
# command (`hhh serve`, `hhh train`, `python -m vllm.entrypoints.openai.api_server ...`).
#
# Every regular file in /run/secrets (or $SECRETS_DIR) whose name is an hhh setting (HHH_*) or
# vLLM's VLLM_API_KEY becomes that variable, holding the file's content (trailing newlines
# dropped); other files (api_keys.json, ...) stay files.
# Compose secrets (`target: HHH_GATEWAY_SIGNING_KEY`) and Kubernetes Secret volumes (one key
# per variable) both land there, so no secret is in the image or in a manifest's environment.
set -eu

for file in "${SECRETS_DIR:-/run/secrets}"/*; do
    [ -f "$file" ] || continue
    name=$(basename "$file")
    case "$name" in
        *[!A-Z0-9_]*) continue ;;
        HHH_* | VLLM_API_KEY) ;;
        *) continue ;;
    esac
    value=$(cat "$file")
    export "$name=$value"
done

exec "$@"
