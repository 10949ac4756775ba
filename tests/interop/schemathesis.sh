#!/usr/bin/env bash
# A bounded schemathesis run against a live Vouch server: every operation of /openapi.json,
# every check (no 5xx; status, content type, headers and body as the document says; valid
# requests accepted and invalid ones refused), as an admin operator.
#
# Usage: schemathesis.sh BASE_URL ADMIN_TOKEN ROOT_PEM DEVICE_ID [PYTHON]
# DEVICE_ID names an enrolled device: the `{id}` of the device operations, so that they reach
# more than "404 no such device". Bounded by SCHEMATHESIS_EXAMPLES cases per operation
# (default 20) and SCHEMATHESIS_SECONDS for the whole run (default 90). Exit 0 only if
# schemathesis found nothing. Every request asks for its own connection (`Connection: close`):
# the server closes a kept-alive connection that stays silent for 10 s (its header timeout),
# and once in CI a POST failed as a TLS "EOF" network error, most likely sent on such a
# connection after a pause in case generation; that says nothing of the API.
set -euo pipefail
base=$1 token=$2 root=$3 python=${5:-python3}
export VOUCH_DEVICE_ID=$4
here=$(cd "$(dirname "$0")" && pwd)
report=$(mktemp -d)
trap 'rm -rf "$report"' EXIT
cd "$report"
"$python" -m schemathesis.cli --config-file "$here/schemathesis.toml" --no-color \
    run "$base/openapi.json" \
    --url "$base" \
    -H "Authorization: Bearer $token" \
    -H "Connection: close" \
    --tls-verify "$root" \
    --checks all \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-20}" \
    --max-time "${SCHEMATHESIS_SECONDS:-90}" \
    --seed "${SCHEMATHESIS_SEED:-20261202}" \
    --workers 1 \
    --generation-database none
