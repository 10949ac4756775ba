"""What cose_open.py and cose_seal.py share: the keys of a Vouch vectors file as pycose keys,
the envelope's header labels, and the one thing pycose 1.1.0 lacks for the envelope.

pycose runs HKDF for ECDH-SS + HKDF-256 without the 'salt' header parameter (-20), which RFC
9053 section 5.1 makes HKDF's salt; the envelope uses a fresh salt per message. `use_salt()`
replaces DirectKeyAgreement._compute_kek with the same steps (pycose's ECDH, pycose's
COSE_KDF_Context) plus that salt. Everything else is pycose's own code.
"""

import hashlib
import json

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pycose import headers
from pycose.keys import EC2Key
from pycose.keys.curves import P256
from pycose.messages.recipient import DirectKeyAgreement

# Envelope labels (docs/envelope.md) that pycose has no names for.
CWT_CLAIMS = 15
DATA_TYPE = -65537
SESSION_ID = -65538
SEQUENCE = -65539
X5CHAIN_SENDER = -29
CLAIM_ISS, CLAIM_AUD, CLAIM_EXP, CLAIM_IAT, CLAIM_CTI = 1, 3, 4, 6, 7
SHA_256 = -16
CONTENT_FORMAT_COSE_ENCRYPT = 96


def use_salt():
    def compute_kek(self, target_alg, peer_key, local_key, kex_alg):
        shared_secret = kex_alg._ecdh(peer_key.crv, local_key, peer_key)
        context = self.get_kdf_context(target_alg)
        hkdf = HKDF(
            algorithm=kex_alg.get_hash_func(),
            length=context.supp_pub_info.key_data_length,
            salt=self.get_attr(headers.Salt),
            info=context.encode(),
        )
        return hkdf.derive(shared_secret)

    DirectKeyAgreement._compute_kek = compute_kek


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _int_bytes(n: int) -> bytes:
    return n.to_bytes(32, "big")


def private_key(pem: str) -> EC2Key:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    numbers = key.private_numbers()
    return EC2Key(
        crv=P256,
        x=_int_bytes(numbers.public_numbers.x),
        y=_int_bytes(numbers.public_numbers.y),
        d=_int_bytes(numbers.private_value),
    )


def certificate(pem: str):
    """(DER, public key as a pycose EC2Key) of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    numbers = cert.public_key().public_numbers()
    public = EC2Key(crv=P256, x=_int_bytes(numbers.x), y=_int_bytes(numbers.y))
    return cert.public_bytes(serialization.Encoding.DER), public


class Party:
    """One device of a vectors file."""

    def __init__(self, entry: dict):
        self.spiffe_id = entry["spiffe_id"]
        self.device_key = private_key(entry["device_key_pem"])
        self.device_cert, self.device_public = certificate(entry["device_certificate_pem"])
        self.ka_key = private_key(entry["key_agreement_key_pem"])
        self.ka_cert, self.ka_public = certificate(entry["key_agreement_certificate_pem"])


def load(path: str):
    with open(path) as f:
        data = json.load(f)
    return data, Party(data["sender"]), Party(data["recipient"])


