"""Opens Vouch envelopes with pycose: verifies the COSE_Sign1 (ES256) with the sender's device
certificate's key, checks x5t (and x5chain / x5chain-sender when sent) against the sender's
certificates, resolves the static key id to the sender's key-agreement certificate, and
decrypts the inner COSE_Encrypt (ECDH-SS + HKDF-256, A256GCM) with pycose's recipient code and
the outer protected header bytes as external AAD. See cose_common.py for the salt.

Usage: cose_open.py VECTORS_JSON
Prints one JSON object per vector: name, payload_hex, iss, aud, data_type, session_id_hex, seq.
Exits 1 with the reason on the first envelope pycose refuses.
"""

import json
import sys

import cbor2
from pycose import headers
from pycose.messages import EncMessage, Sign1Message

import cose_common as c


def open_envelope(envelope: bytes, sender: c.Party, recipient: c.Party) -> dict:
    sign1 = Sign1Message.decode(envelope)
    sign1.key = sender.device_public
    if not sign1.verify_signature():
        raise ValueError("pycose: the signature does not verify")
    phdr = sign1.phdr
    if phdr[headers.X5t] != [c.SHA_256, c.sha256(sender.device_cert)]:
        raise ValueError("x5t is not the sender's device certificate")
    chain = sign1.uhdr.get(headers.X5chain)
    if chain is not None:
        leaf = chain if isinstance(chain, bytes) else chain[0]
        if leaf != sender.device_cert:
            raise ValueError("x5chain does not start with the sender's device certificate")
    if phdr[headers.ContentType] != c.CONTENT_FORMAT_COSE_ENCRYPT:
        raise ValueError("content type is not COSE_Encrypt")
    claims = phdr[c.CWT_CLAIMS]

    inner = cbor2.loads(sign1.payload)
    if inner.tag != 96:
        raise ValueError("payload is not a tagged COSE_Encrypt")
    encrypt = EncMessage.decode(sign1.payload)
    encrypt.external_aad = sign1.phdr_encoded
    (rcpt,) = encrypt.recipients
    if rcpt.uhdr[headers.StaticKeyID] != c.sha256(sender.ka_cert):
        raise ValueError("static key id is not the sender's key-agreement certificate")
    sent_ka = rcpt.uhdr.get(c.X5CHAIN_SENDER)
    if sent_ka is not None and sent_ka != sender.ka_cert:
        raise ValueError("x5chain-sender is not the sender's key-agreement certificate")
    if rcpt.uhdr[headers.PartyUID] != claims[c.CLAIM_ISS].encode():
        raise ValueError("PartyU identity is not iss")
    if rcpt.uhdr[headers.PartyVID] != claims[c.CLAIM_AUD].encode():
        raise ValueError("PartyV identity is not aud")
    # A receiver resolves the static key id to a key; pycose reads the sender's static key
    # from the recipient's headers, so it is handed over there (not encoded anywhere).
    rcpt.uhdr_update({headers.StaticKey: sender.ka_public})
    rcpt.key = recipient.ka_key
    payload = encrypt.decrypt(rcpt)
    return {
        "payload_hex": payload.hex(),
        "iss": claims[c.CLAIM_ISS],
        "aud": claims[c.CLAIM_AUD],
        "data_type": phdr[c.DATA_TYPE],
        "session_id_hex": phdr[c.SESSION_ID].hex(),
        "seq": phdr[c.SEQUENCE],
    }


def main() -> int:
    c.use_salt()
    data, sender, recipient = c.load(sys.argv[1])
    for vector in data["vectors"]:
        try:
            opened = open_envelope(bytes.fromhex(vector["envelope_hex"]), sender, recipient)
        except Exception as e:  # noqa: BLE001 - every refusal is a finding
            print(f"{vector['name']}: pycose refuses it: {e!r}")
            return 1
        print(json.dumps({"name": vector["name"], **opened}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
