"""Makes a Vouch envelope with pycose from the sender and recipient keys of a vectors file:
a COSE_Sign1 (ES256, the sender's device key) whose protected header carries the CWT claims,
x5t, content type, data type, session id and sequence number (crit as Vouch marks them), and
whose payload is a COSE_Encrypt (A256GCM, one ECDH-SS + HKDF-256 recipient with static key id,
salt and PartyU/PartyV identities) made by pycose with the outer protected header as external
AAD. Labels pycose has no names for are raw integers. See cose_common.py for the salt.

Usage: cose_seal.py VECTORS_JSON PAYLOAD_HEX DATA_TYPE SESSION_ID_HEX SEQ IAT EXP [--chain]
Prints the envelope in hex.
"""

import os
import sys

from pycose import headers
from pycose.algorithms import A256GCM, EcdhSsHKDF256, Es256
from pycose.messages import EncMessage, Sign1Message
from pycose.messages.recipient import DirectKeyAgreement

import cose_common as c


def main() -> int:
    c.use_salt()
    path, payload_hex, data_type, session_hex, seq, iat, exp = sys.argv[1:8]
    include_chain = "--chain" in sys.argv[8:]
    _, sender, recipient = c.load(path)

    claims = {
        c.CLAIM_ISS: sender.spiffe_id,
        c.CLAIM_AUD: recipient.spiffe_id,
        c.CLAIM_EXP: int(exp),
        c.CLAIM_IAT: int(iat),
        c.CLAIM_CTI: os.urandom(16),
    }
    sign1 = Sign1Message(
        phdr={
            headers.Algorithm: Es256,
            headers.Critical: [c.CWT_CLAIMS, c.DATA_TYPE, c.SESSION_ID, c.SEQUENCE],
            headers.ContentType: c.CONTENT_FORMAT_COSE_ENCRYPT,
            c.CWT_CLAIMS: claims,
            headers.X5t: [c.SHA_256, c.sha256(sender.device_cert)],
            c.DATA_TYPE: data_type,
            c.SESSION_ID: bytes.fromhex(session_hex),
            c.SEQUENCE: int(seq),
        },
        uhdr={headers.X5chain: sender.device_cert} if include_chain else {},
        key=sender.device_key,
    )

    rcpt_uhdr = {
        headers.StaticKeyID: c.sha256(sender.ka_cert),
        headers.Salt: os.urandom(16),
        headers.PartyUID: sender.spiffe_id.encode(),
        headers.PartyVID: recipient.spiffe_id.encode(),
    }
    if include_chain:
        rcpt_uhdr[c.X5CHAIN_SENDER] = sender.ka_cert
    rcpt = DirectKeyAgreement(phdr={headers.Algorithm: EcdhSsHKDF256}, uhdr=rcpt_uhdr)
    rcpt.key = sender.ka_key
    rcpt.local_attrs = {headers.StaticKey: recipient.ka_public}
    encrypt = EncMessage(
        phdr={headers.Algorithm: A256GCM},
        uhdr={headers.IV: os.urandom(12)},
        payload=bytes.fromhex(payload_hex),
        external_aad=sign1.phdr_encoded,
        recipients=[rcpt],
    )
    sign1.payload = encrypt.encode()
    print(sign1.encode().hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())
