#!/usr/bin/env bash
# Runs the pika interoperability checks: `run-interop.sh pika [URL]` (see that script).
exec "$(dirname "${BASH_SOURCE[0]}")/run-interop.sh" pika "$@"
