#!/usr/bin/env bash
# Quick start: build `vouch`, start it on the embedded SQLite registry with the example policy
# repository, and take one device through its life: bootstrap token, CA pinning, enrollment by
# CSR, openssl verification, renewal over mTLS, policy decisions, revocation and the CRL. Then
# a device with a (software) TPM runs `vouch-agent`: enrollment bound to its TPM by credential
# activation, a passing attestation, and a changed boot that quarantines it.
# Prints every step. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

need=()
for tool in curl jq openssl pkg-config; do command -v "$tool" >/dev/null || need+=("$tool"); done
# The TPM part: a software TPM, its tools, and libtss2 for vouch-agent's TPM access.
command -v swtpm >/dev/null || need+=(swtpm swtpm-tools)
command -v tpm2_pcrextend >/dev/null || need+=(tpm2-tools)
pkg-config --exists tss2-esys 2>/dev/null || need+=(libtss2-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" ca-certificates >/dev/null
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "build vouch and vouch-agent (release)"
cargo build --release --bin vouch --bin vouch-agent --bin vouch-agent-tpm
VOUCH=$PWD/target/release/vouch
AGENT=$PWD/target/release/vouch-agent

WORK=$(mktemp -d)
DATA=$WORK/data
# The example policies, with reference values for class `sensor` that accept the boot of a
# fresh software TPM (nothing measured: PCRs 0-8 are zero). Real values come from the
# firmware vendor or a golden device.
POLICIES=$WORK/policies
cp -r examples/policies "$POLICIES"
ZERO=0000000000000000000000000000000000000000000000000000000000000000
jq -n --arg z "$ZERO" '{device_classes: {sensor: {pcrs: [0,1,2,3,4,5,6,7,8], accepted: [
    {name: "swtpm-unmeasured", firmware: ([range(0;8)] | map({key: tostring, value: $z}) | from_entries),
     config: {pcr: 8, digests: [$z]}, min_firmware_version: 0}]}}}' > "$POLICIES/reference-values.json"
cd "$WORK"
cleanup() {
    [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null
    [ -f "$WORK/tpm/swtpm.pid" ] && kill "$(cat "$WORK/tpm/swtpm.pid")" 2>/dev/null
    wait 2>/dev/null || true
}
trap cleanup EXIT

step "start the server: new CA for trust domain fleet.example, SQLite registry in $DATA, policies from examples/policies (+ reference values)"
# The software TPM below has no manufacturer EK certificate, so this lab server takes EKs on
# first use (--tpm-trust-on-first-use, loudly logged). A real fleet gives --tpm-roots.
"$VOUCH" serve --data-dir "$DATA" --trust-domain fleet.example --listen 127.0.0.1:0 \
    --policy-dir "$POLICIES" --tpm-trust-on-first-use \
    > server.out 2> server.log &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q '^listening on ' server.out 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening on //p' server.out)
[ -n "$ADDR" ] || { cat server.log; exit 1; }
PORT=${ADDR##*:}
URL=https://localhost:$PORT
echo "listening on $URL"
ls -l "$DATA"

step "operator: mint an admin token from the data directory"
ADMIN=$("$VOUCH" admin-token --data-dir "$DATA" --role admin --ttl 15m --subject quickstart)
echo "${ADMIN:0:24}..."

step "operator: create a one-time bootstrap token for zone sensors"
curl -sS --fail-with-body --cacert "$DATA/root.pem" -H "Authorization: Bearer $ADMIN" \
    -H 'content-type: application/json' -d '{"zone":"sensors","labels":{"line":"a"},"device_class":"sensor"}' \
    "$URL/v1/bootstrap-tokens" > token.json
jq '{token_id, expires_at, ca_sha256}' token.json
TOKEN=$(jq -r .token token.json)

step "device: fetch the trust bundle without trusting anyone, and pin it to the token's fingerprint"
curl -sS --fail-with-body --insecure "$URL/v1/trust-bundle" > bundle.pem
GOT=$(openssl x509 -in bundle.pem -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1)
WANT=$(jq -r .ca_sha256 token.json)
echo "trust bundle sha256 $GOT"
[ "$GOT" = "$WANT" ] && echo "matches the token: CA pinned" || { echo "CA fingerprint mismatch"; exit 1; }

step "device: make a P-256 key and a CSR (the key never leaves the device)"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout device.key \
    -subj /CN=whatever -out device.csr 2>/dev/null
chmod 600 device.key

step "device: enroll with the token and the CSR"
jq -n --arg token "$TOKEN" --rawfile csr device.csr '{token: $token, csr_pem: $csr}' |
    curl -sS --fail-with-body --cacert bundle.pem -H 'content-type: application/json' -d @- \
    "$URL/v1/enroll" > enroll.json
jq '{device_id, spiffe_id, zone, serial, not_after}' enroll.json
jq -r .certificate_pem enroll.json > device.pem
jq -r .ca_chain_pem enroll.json > chain.pem
cat device.pem chain.pem > device-chain.pem

step "check the certificate with openssl"
openssl verify -CAfile bundle.pem -untrusted chain.pem device.pem
openssl x509 -in device.pem -noout -subject -ext subjectAltName,keyUsage,extendedKeyUsage

step "the token is single-use: a second enrollment is refused"
jq -n --arg token "$TOKEN" --rawfile csr device.csr '{token: $token, csr_pem: $csr}' |
    curl -sS --cacert bundle.pem -H 'content-type: application/json' -d @- "$URL/v1/enroll" | jq .
echo

step "device: renew over mutual TLS with its current certificate"
openssl req -new -key device.key -subj /CN=whatever -out renew.csr 2>/dev/null
jq -n --rawfile csr renew.csr '{csr_pem: $csr}' |
    curl -sS --fail-with-body --cacert bundle.pem --cert device-chain.pem --key device.key \
    -H 'content-type: application/json' -d @- "$URL/v1/renew" > renew.json
jq '{device_id, serial, not_after}' renew.json

step "a gateway in zone edge enrolls with a server-generated key"
curl -sS --fail-with-body --cacert bundle.pem -H "Authorization: Bearer $ADMIN" \
    -H 'content-type: application/json' -d '{"zone":"edge","device_class":"gateway"}' \
    "$URL/v1/bootstrap-tokens" | jq '{token, generate_key: true}' |
    curl -sS --fail-with-body --cacert bundle.pem -H 'content-type: application/json' -d @- \
    "$URL/v1/enroll" > gateway.json
GATEWAY=$(jq -r .device_id gateway.json)
DEVICE=$(jq -r .device_id enroll.json)
jq '{device_id, zone}' gateway.json

ask() { # $1 protocol, $2 tls: the sensor asks, over mTLS, whether it may send telemetry
    jq -n --arg p "$DEVICE" --arg g "$GATEWAY" --arg proto "$1" --argjson tls "$2" \
        '{principal: $p, action: "send", resource: {device: $g},
          context: {data_type: "telemetry", protocol: $proto, tls: $tls, mtls: $tls, size: 256}}' |
        curl -sS --cacert bundle.pem --cert device-chain.pem --key device.key \
        -H 'content-type: application/json' -d @- "$URL/v1/authorize" | jq -c .
}
step "policy: may the sensor send telemetry to the gateway over mqtt? (allowed by sensor-to-gateway)"
ask mqtt false
step "policy: ... over https? (denied: not a protocol of its zone; nothing permits it)"
ask https true

step "operator: revoke the device"
curl -sS --fail-with-body --cacert bundle.pem -H "Authorization: Bearer $ADMIN" \
    -H 'content-type: application/json' -d '{"reason":"quickstart"}' \
    "$URL/v1/devices/$DEVICE/revoke" | jq .

step "the CRL lists both certificates (openssl crl)"
curl -sS --fail-with-body --cacert bundle.pem "$URL/v1/crl" > crl.der
openssl crl -inform DER -in crl.der -CAfile chain.pem -noout -text 2>&1 | grep -E -A1 "verify|CRL Number|Serial Number" | grep -v "^--"

step "policy: the revoked sensor is denied by the quarantine rule (operator asks)"
jq -n --arg p "$DEVICE" --arg g "$GATEWAY" \
    '{principal: $p, action: "send", resource: {device: $g},
      context: {data_type: "telemetry", protocol: "mqtt", tls: false, mtls: false, size: 256}}' |
    curl -sS --fail-with-body --cacert bundle.pem -H "Authorization: Bearer $ADMIN" \
    -H 'content-type: application/json' -d @- "$URL/v1/authorize" | jq -c .

step "the decision log holds all three decisions"
curl -sS --fail-with-body --cacert bundle.pem -H "Authorization: Bearer $ADMIN" \
    "$URL/v1/policy/decisions" | jq -c '.decisions[] | {id, caller, decision, policies, policy_version}'

step "a revoked device cannot renew"
jq -n --rawfile csr renew.csr '{csr_pem: $csr}' |
    curl -sS --cacert bundle.pem --cert device-chain.pem --key device.key \
    -H 'content-type: application/json' -d @- "$URL/v1/renew" | jq .

step "a device with a TPM: start a software TPM (swtpm) on a free loopback port"
mkdir -p tpm
for _ in $(seq 1 20); do
    TPM_PORT=$(shuf -i 20000-60000 -n 1)
    swtpm socket --tpm2 --tpmstate dir="$WORK/tpm" \
        --server type=tcp,port=$TPM_PORT,bindaddr=127.0.0.1 \
        --ctrl type=tcp,port=$((TPM_PORT + 1)),bindaddr=127.0.0.1 \
        --flags not-need-init,startup-clear --pid file="$WORK/tpm/swtpm.pid" -d 2>/dev/null && break
done
TCTI=swtpm:host=127.0.0.1,port=$TPM_PORT
echo "TPM at $TCTI"

step "operator: a bootstrap token for the TPM device"
TPM_TOKEN=$(curl -sS --fail-with-body --cacert "$DATA/root.pem" -H "Authorization: Bearer $ADMIN" \
    -H 'content-type: application/json' -d '{"zone":"sensors","device_class":"sensor"}' \
    "$URL/v1/bootstrap-tokens" | jq -r .token)

step "device: vouch-agent pins the CA, enrolls with its TPM (EK + AK, credential activation), attests once"
VOUCH_JOIN_TOKEN=$TPM_TOKEN "$AGENT" run --server "$URL" --state-dir "$WORK/agent" --tpm "$TCTI" --once
"$AGENT" status --state-dir "$WORK/agent"
TPM_DEVICE=$(jq -r .device_id "$WORK/agent/identity.json")

step "operator: the device is attested, its keys bound to its TPM's endorsement key"
curl -sS --fail-with-body --cacert bundle.pem -H "Authorization: Bearer $ADMIN" \
    "$URL/v1/devices/$TPM_DEVICE" | jq '{id, attestation, last_attested, ek_sha256}'

step "the device's boot changes (PCR 0 extended with an unknown digest); its next attestation fails"
TPM2TOOLS_TCTI=$TCTI TSS2_LOG=all+NONE tpm2_pcrextend \
    "0:sha256=$(printf 'unsigned bootloader' | openssl dgst -sha256 -r | cut -d' ' -f1)"
"$AGENT" run --server "$URL" --state-dir "$WORK/agent" --tpm "$TCTI" --once ||
    echo "vouch-agent exited $?: attestation failed"

step "operator: the device is quarantined, with the reason, and its history shows both results"
curl -sS --fail-with-body --cacert bundle.pem -H "Authorization: Bearer $ADMIN" \
    "$URL/v1/devices/$TPM_DEVICE/attestations" |
    jq '{attestation: .device.attestation, reason: .device.attestation_reason,
         history: [.attestations[] | {outcome, reference_set}]}'

step "done: files are in $WORK (server log: $WORK/server.log)"
