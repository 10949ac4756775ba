#!/usr/bin/env bash
# The whole of Vouch in one command, on the embedded default (SQLite, a fresh data
# directory), with real binaries and real network calls on loopback:
#   1. the server starts; an operator creates bootstrap tokens with the CLI;
#   2. three sidecars (vouch-agent) enroll: a sensor with a (software) TPM, a sensor
#      without one, an edge gateway; the TPM sensor passes credential activation and its
#      first attestation (a regional node enrolls too, as a destination);
#   3. the sensor sends telemetry to the gateway through its sidecar (over an MQTT broker):
#      delivered, signed and encrypted, and shown decrypted at the gateway; its attempt to
#      reach the regional node directly is refused, the deciding policy named;
#   4. the TPM sensor's firmware measurement changes: its next attestation fails, it is
#      quarantined, and the gateway refuses its next message;
#   5. the operator revokes the other sensor with the CLI: the gateway refuses its next
#      message;
#   6. a policy change is committed to the policy Git repository: live without a restart,
#      and the next decision names the new commit.
# Prints every step and its outcome; exits 0 only if every step behaved as described;
# leaves nothing running.
#
#   bash scripts/scenario.sh                        # builds release binaries first
#   VOUCH_BIN_DIR=target/debug bash scripts/scenario.sh   # uses binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

need=()
for tool in curl jq git openssl pkg-config; do command -v "$tool" >/dev/null || need+=("$tool"); done
command -v swtpm >/dev/null || need+=(swtpm swtpm-tools)
command -v tpm2_pcrextend >/dev/null || need+=(tpm2-tools)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
pkg-config --exists tss2-esys 2>/dev/null || need+=(libtss2-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" ca-certificates >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
ok() { printf '   \033[32mok\033[0m  %s\n' "$*"; }
fail() {
    printf '   \033[31mFAILED\033[0m  %s\n' "$*"
    echo "   (logs are in $WORK)"
    KEEP=1
    exit 1
}

if [ -n "${VOUCH_BIN_DIR:-}" ]; then
    BIN=$(cd "$VOUCH_BIN_DIR" && pwd)
else
    bold "build vouch and vouch-agent (release)"
    cargo build --release --bin vouch --bin vouch-agent --bin vouch-agent-tpm
    BIN=$REPO/target/release
fi
VOUCH=$BIN/vouch
AGENT=$BIN/vouch-agent
[ -x "$VOUCH" ] && [ -x "$AGENT" ] || { echo "no vouch and vouch-agent in $BIN"; exit 1; }

WORK=$(mktemp -d)
KEEP=0
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$WORK/tpm/swtpm.pid" ] && kill "$(cat "$WORK/tpm/swtpm.pid")" 2>/dev/null
    wait 2>/dev/null || true
    [ "$KEEP" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
# The operator CLI keeps its settings here, not in the user's own config.
export XDG_CONFIG_HOME=$WORK/config
unset VOUCH_SERVER VOUCH_CA_FILE VOUCH_TOKEN VOUCH_CONFIG VOUCH_JOIN_TOKEN

free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$(shuf -i 20000-60000 -n 1)
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
    return 1
}
# until SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds.
until_true() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || fail "$what (waited ${seconds} s)"
        sleep 0.2
    done
}
# api SOCKET METHOD PATH [JSON]: the workload API of a sidecar; prints the body, then the
# HTTP status on the last line.
api() {
    local sock=$1 method=$2 path=$3 body=${4:-}
    if [ -n "$body" ]; then
        curl -sS --unix-socket "$sock" -X "$method" -H 'content-type: application/json' \
            -d "$body" -w '\n%{http_code}' "http://localhost$path"
    else
        curl -sS --unix-socket "$sock" -X "$method" -w '\n%{http_code}' "http://localhost$path"
    fi
}
status_of() { tail -n1 <<<"$1"; }
body_of() { sed '$d' <<<"$1"; }
b64() { printf '%s' "$1" | base64 -w0; }

# --- the policy repository: the examples, reference values that accept a fresh software
# TPM's boot (nothing measured: PCRs 0-8 are zero; real values come from the firmware
# vendor), and this fleet's guard rail that sensors reach other zones only through a
# gateway.
POLICIES=$WORK/policies
cp -r "$REPO/examples/policies" "$POLICIES"
cp "$REPO/scripts/scenario/sensors-through-gateways.cedar" "$POLICIES/policies/"
ZERO=0000000000000000000000000000000000000000000000000000000000000000
jq -n --arg z "$ZERO" '{device_classes: {sensor: {pcrs: [0,1,2,3,4,5,6,7,8], accepted: [
    {name: "swtpm-unmeasured", firmware: ([range(0;8)] | map({key: tostring, value: $z}) | from_entries),
     config: {pcr: 8, digests: [$z]}, min_firmware_version: 0}]}}}' > "$POLICIES/reference-values.json"
git -C "$POLICIES" init -q -b main
git -C "$POLICIES" -c user.name=ops -c user.email=ops@fleet.example add -A
git -C "$POLICIES" -c user.name=ops -c user.email=ops@fleet.example commit -q -m "fleet policies"
FIRST_COMMIT=$(git -C "$POLICIES" rev-parse HEAD)

bold "1. start the server; the operator creates bootstrap tokens"
# A software TPM has no manufacturer EK certificate: this lab server takes EKs on first use
# (loudly logged). A real fleet gives --tpm-roots.
"$VOUCH" serve --data-dir "$WORK/data" --trust-domain fleet.example --listen 127.0.0.1:0 \
    --policy-dir "$POLICIES" --policy-poll 1s --tpm-trust-on-first-use \
    > server.out 2> server.log &
PIDS+=($!)
until_true 30 "the server to listen" grep -q '^listening on ' server.out
ADDR=$(sed -n 's/^listening on //p' server.out)
URL=https://localhost:${ADDR##*:}
ok "vouch serve: $URL, SQLite registry and CA in $WORK/data, policies at commit ${FIRST_COMMIT:0:12}"
ADMIN=$("$VOUCH" admin-token --data-dir "$WORK/data" --role admin --ttl 15m --subject scenario 2>/dev/null)
VOUCH_TOKEN=$ADMIN "$VOUCH" login --server "$URL" --ca-file "$WORK/data/root.pem" >/dev/null
ok "vouch login: the CLI talks to the server with an admin token"
token() { "$VOUCH" token create --zone "$1" ${2:+--device-class "$2"} --output json | jq -r .token; }
TPM_TOKEN=$(token sensors sensor)
SENSOR_TOKEN=$(token sensors sensor)
GATEWAY_TOKEN=$(token edge gateway)
REGIONAL_TOKEN=$(token regional server)
ok "vouch token create: two for zone sensors, one for edge, one for regional"

bold "2. three sidecars enroll: a TPM sensor, a sensor without a TPM, an edge gateway"
# A port found free may be taken before mosquitto binds it: then it exits, and another is tried.
for _ in $(seq 1 10); do
    BROKER_PORT=$(free_port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$BROKER_PORT" > mosquitto.conf
    "$MOSQUITTO" -c mosquitto.conf >/dev/null 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null && break
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$BROKER_PID" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null; then
        PIDS+=("$BROKER_PID")
        break
    fi
    kill "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=
done
[ -n "${BROKER_PID:-}" ] || fail "mosquitto to listen"
MQTT=mqtt://127.0.0.1:$BROKER_PORT
say "MQTT broker (mosquitto) at $MQTT"

mkdir -p tpm
for _ in $(seq 1 20); do
    TPM_PORT=$(free_port)
    swtpm socket --tpm2 --tpmstate dir="$WORK/tpm" \
        --server type=tcp,port="$TPM_PORT",bindaddr=127.0.0.1 \
        --ctrl type=tcp,port=$((TPM_PORT + 1)),bindaddr=127.0.0.1 \
        --flags not-need-init,startup-clear --pid file="$WORK/tpm/swtpm.pid" -d 2>/dev/null && break
done
TCTI=swtpm:host=127.0.0.1,port=$TPM_PORT
say "software TPM (swtpm) at $TCTI"

agent() { # NAME TOKEN ARGS...: starts a sidecar with its state in $WORK/NAME
    local name=$1 join=$2
    shift 2
    VOUCH_JOIN_TOKEN=$join RUST_LOG=info "$AGENT" run --server "$URL" --state-dir "$WORK/$name" \
        "$@" > "$name.out" 2> "$name.log" &
    PIDS+=($!)
}
REGIONAL_PORT=$(free_port)
agent tpm-sensor "$TPM_TOKEN" --tpm "$TCTI" --attest-every 2s --mqtt "$MQTT" --advertise "$MQTT"
agent sensor "$SENSOR_TOKEN" --mqtt "$MQTT" --advertise "$MQTT"
agent gateway "$GATEWAY_TOKEN" --mqtt "$MQTT" --advertise "$MQTT"
agent regional "$REGIONAL_TOKEN" --listen "127.0.0.1:$REGIONAL_PORT" --advertise "https://127.0.0.1:$REGIONAL_PORT"
healthy() { [ "$(curl -s --unix-socket "$WORK/$1/agent.sock" http://localhost/healthz)" = ok ]; }
for name in tpm-sensor sensor gateway regional; do
    until_true 60 "$name to enroll and serve its workload socket" healthy "$name"
done
device_id() { jq -r .device_id "$WORK/$1/identity.json"; }
TPM_SENSOR=$(device_id tpm-sensor)
SENSOR=$(device_id sensor)
GATEWAY=$(device_id gateway)
REGIONAL=$(device_id regional)
attestation() { "$VOUCH" device show "$1" --output json | jq -r .attestation; }
attestation_is() { [ "$(attestation "$1")" = "$2" ]; }
until_true 30 "the TPM sensor's first attestation to pass" attestation_is "$TPM_SENSOR" active
EK=$("$VOUCH" device show "$TPM_SENSOR" --output json | jq -r .ek_sha256)
ok "tpm-sensor $TPM_SENSOR: keys bound to its TPM (EK sha256 ${EK:0:16}...), first attestation passed"
ok "sensor     $SENSOR: enrolled without a TPM (trust low)"
ok "gateway    $GATEWAY: zone edge"
say "regional   $REGIONAL: zone regional, takes direct deliveries on 127.0.0.1:$REGIONAL_PORT"
"$VOUCH" device list | sed 's/^/   | /'

bold "3. the TPM sensor sends telemetry to the gateway; then tries the regional node directly"
send() { # FROM TO DATA_TYPE TEXT [PROTOCOL]
    local body
    body=$(jq -nc --arg to "$2" --arg t "$3" --arg p "$(b64 "$4")" --arg proto "${5:-}" \
        '{to: $to, data_type: $t, payload: $p} + (if $proto == "" then {} else {protocol: $proto} end)')
    api "$WORK/$1/agent.sock" POST /v1/send "$body"
}
answer=$(send tpm-sensor "$GATEWAY" telemetry "temperature=21.5C" mqtt)
[ "$(status_of "$answer")" = 200 ] || fail "the telemetry was not sent: $answer"
say "sidecar: $(body_of "$answer" | jq -c '{via, policies, message_id}')"
arrived=$(api "$WORK/gateway/agent.sock" GET "/v1/messages?wait=15")
[ "$(body_of "$arrived" | jq '.messages | length')" = 1 ] || fail "the gateway got no message: $arrived"
text=$(body_of "$arrived" | jq -r '.messages[0].payload' | base64 -d)
from=$(body_of "$arrived" | jq -r '.messages[0].from')
[ "$text" = "temperature=21.5C" ] && [ "$from" = "$TPM_SENSOR" ] || fail "the gateway got something else: $arrived"
ok "delivered: the gateway's sidecar verified, checked policy, decrypted: \"$text\" from $from"
answer=$(send tpm-sensor "$REGIONAL" telemetry "temperature=21.5C")
[ "$(status_of "$answer")" = 403 ] || fail "the sensor reached the regional node: $answer"
code=$(body_of "$answer" | jq -r .code)
detail=$(body_of "$answer" | jq -r .detail)
[ "$code" = policy_denied ] && grep -q sensors-only-through-gateways <<<"$detail" || fail "refused, but not by policy: $answer"
ok "refused by the sensor's own sidecar: $code: $detail"

bold "4. the TPM sensor's firmware changes: its next attestation fails; the gateway refuses it"
# A message sealed now and carried to the gateway later, by hand: the gateway's own checks
# decide, not the sender's sidecar.
sealed=$(api "$WORK/tpm-sensor/agent.sock" POST /v1/seal \
    "$(jq -nc --arg to "$GATEWAY" --arg p "$(b64 "temperature=22.0C")" '{to: $to, data_type: "telemetry", protocol: "mqtt", payload: $p}')")
[ "$(status_of "$sealed")" = 200 ] || fail "cannot seal: $sealed"
ENVELOPE=$(body_of "$sealed" | jq -r .envelope)
TPM2TOOLS_TCTI=$TCTI TSS2_LOG=all+NONE tpm2_pcrextend \
    "0:sha256=$(printf 'unsigned bootloader' | openssl dgst -sha256 -r | cut -d' ' -f1)" >/dev/null
say "PCR 0 extended with the digest of an unsigned bootloader"
until_true 30 "the TPM sensor to be quarantined" attestation_is "$TPM_SENSOR" quarantined
reason=$("$VOUCH" device show "$TPM_SENSOR" --output json | jq -r .attestation_reason)
ok "quarantined by the server: $reason"
crl_number() { "$VOUCH" crl show --output json | jq -r .number; }
knows_crl() { # NAME NUMBER: the sidecar uses CRL NUMBER or a newer one
    local n
    n=$(api "$WORK/$1/agent.sock" GET /v1/identity | sed '$d' | jq -r '.crl_number // 0')
    [ "$n" -ge "$2" ]
}
until_true 20 "the gateway to take the CRL that puts the sensor on hold" knows_crl gateway "$(crl_number)"
opened=$(api "$WORK/gateway/agent.sock" POST /v1/open "$(jq -nc --arg e "$ENVELOPE" '{envelope: $e, protocol: "mqtt"}')")
[ "$(status_of "$opened")" = 403 ] || fail "the gateway took the quarantined sensor's message: $opened"
ok "the gateway refuses its message: $(body_of "$opened" | jq -r '"\(.code): \(.detail)"')"
answer=$(send tpm-sensor "$GATEWAY" telemetry "temperature=22.5C" mqtt)
[ "$(status_of "$answer")" != 200 ] || fail "the quarantined sensor's sidecar still sends"
ok "its own sidecar sends nothing more: $(body_of "$answer" | jq -r '"\(.code): \(.detail)"')"

bold "5. the operator revokes the other sensor with the CLI; the gateway refuses it"
answer=$(send sensor "$GATEWAY" status "battery=87%" mqtt)
[ "$(status_of "$answer")" = 200 ] || fail "the sensor cannot send before its revocation: $answer"
arrived=$(api "$WORK/gateway/agent.sock" GET "/v1/messages?wait=15")
[ "$(body_of "$arrived" | jq -r '.messages[0].from')" = "$SENSOR" ] || fail "the gateway did not get the sensor's status: $arrived"
ok "before: its status message is delivered"
sealed=$(api "$WORK/sensor/agent.sock" POST /v1/seal \
    "$(jq -nc --arg to "$GATEWAY" --arg p "$(b64 "battery=86%")" '{to: $to, data_type: "status", protocol: "mqtt", payload: $p}')")
[ "$(status_of "$sealed")" = 200 ] || fail "cannot seal: $sealed"
ENVELOPE=$(body_of "$sealed" | jq -r .envelope)
say "\$ vouch device revoke $SENSOR --reason \"lost at site 4\""
revoked=$("$VOUCH" device revoke "$SENSOR" --reason "lost at site 4")
sed 's/^/   | /' <<<"$revoked"
REVOKED_CRL=${revoked##*CRL number }
until_true 20 "the gateway to take CRL $REVOKED_CRL" knows_crl gateway "$REVOKED_CRL"
opened=$(api "$WORK/gateway/agent.sock" POST /v1/open "$(jq -nc --arg e "$ENVELOPE" '{envelope: $e, protocol: "mqtt"}')")
[ "$(status_of "$opened")" = 403 ] && grep -q revoked <<<"$opened" || fail "the gateway took the revoked sensor's message: $opened"
ok "the gateway refuses its next message: $(body_of "$opened" | jq -r '"\(.code): \(.detail)"')"

bold "6. a policy change is committed: live without a restart, named by the next decision"
forward() { send gateway "$REGIONAL" telemetry "site4 mean temperature=21.7C" https; }
answer=$(forward)
[ "$(status_of "$answer")" = 403 ] || fail "the gateway could already forward telemetry: $answer"
ok "before: $(body_of "$answer" | jq -r '"\(.code): \(.detail)"')"
cp "$REPO/scripts/scenario/gateway-forwards-telemetry.cedar" "$POLICIES/policies/"
git -C "$POLICIES" -c user.name=ops -c user.email=ops@fleet.example add -A
git -C "$POLICIES" -c user.name=ops -c user.email=ops@fleet.example commit -q \
    -m "gateways forward telemetry to regional nodes"
COMMIT=$(git -C "$POLICIES" rev-parse HEAD)
say "committed ${COMMIT:0:12}: policies/gateway-forwards-telemetry.cedar"
active() { [ "$("$VOUCH" policy status --output json | jq -r .active.version.id)" = "$COMMIT" ]; }
until_true 20 "the server to load commit $COMMIT" active
ok "the server runs it (no restart): $("$VOUCH" policy status | head -n1 | sed 's/  */ /g')"
sidecar_has() { [ "$(api "$WORK/gateway/agent.sock" GET /v1/identity | sed '$d' | jq -r .policy_version)" = "$COMMIT" ]; }
until_true 20 "the gateway's sidecar to take the signed bundle of commit $COMMIT" sidecar_has
answer=$(forward)
[ "$(status_of "$answer")" = 200 ] || fail "the gateway still cannot forward: $answer"
version=$(body_of "$answer" | jq -r .policy_version)
[ "$version" = "$COMMIT" ] || fail "the decision names $version, not $COMMIT"
ok "now delivered (via $(body_of "$answer" | jq -r .via), receipt signed by the regional node): allowed by $(body_of "$answer" | jq -r '.policies | join(",")') at policy version ${version:0:12}"
arrived=$(api "$WORK/regional/agent.sock" GET "/v1/messages?wait=15")
[ "$(body_of "$arrived" | jq -r '.messages[0].from')" = "$GATEWAY" ] || fail "the regional node got nothing: $arrived"
ok "the regional node reads: \"$(body_of "$arrived" | jq -r '.messages[0].payload' | base64 -d)\""

bold "every step behaved as described"
