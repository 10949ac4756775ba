"""Loads every certificate and CRL a real Vouch server issued with pyca/cryptography, validates
the device SVID's path with cryptography's RFC 5280 verifier, and parses it as an X.509-SVID
with py-spiffe. Exits 1 with the reasons if anything is refused.

Usage: check_certificates.py DIR SPIFFE_ID
DIR holds root.pem, issuing.pem, device.pem, device.key, server.pem, policy-signer.pem, crl.der.
"""

import datetime
import pathlib
import sys

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from spiffe import X509Svid


def main() -> int:
    directory, spiffe_id = pathlib.Path(sys.argv[1]), sys.argv[2]
    problems = []

    def load(name):
        try:
            cert = x509.load_pem_x509_certificate((directory / name).read_bytes())
            # Extensions are parsed lazily: reading them is what finds DER errors.
            for ext in cert.extensions:
                _ = ext.value
            return cert
        except Exception as e:  # noqa: BLE001 - every refusal is a finding
            problems.append(f"{name}: pyca/cryptography refuses it: {e!r}")
            return None

    root, issuing = load("root.pem"), load("issuing.pem")
    device, server, signer = load("device.pem"), load("server.pem"), load("policy-signer.pem")
    if problems:
        print("\n".join(problems))
        return 1

    for name, cert, issuer in [
        ("issuing.pem", issuing, root),
        ("device.pem", device, issuing),
        ("server.pem", server, issuing),
        ("policy-signer.pem", signer, issuing),
    ]:
        try:
            cert.verify_directly_issued_by(issuer)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{name}: signature does not verify: {e!r}")

    for name, cert in [("device.pem", device), ("server.pem", server), ("policy-signer.pem", signer)]:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        if bc.value.ca or not bc.critical:
            problems.append(f"{name}: basicConstraints must be critical with cA false")

    try:
        crl = x509.load_der_x509_crl((directory / "crl.der").read_bytes())
        for ext in crl.extensions:
            _ = ext.value
        revoked = list(crl)
        if not crl.is_signature_valid(issuing.public_key()):
            problems.append("crl.der: signature does not verify with the issuing CA")
        if not revoked:
            problems.append("crl.der: lists no revoked certificate")
    except Exception as e:  # noqa: BLE001
        problems.append(f"crl.der: pyca/cryptography refuses it: {e!r}")

    # RFC 5280 path validation of a client certificate, as cryptography's verifier does it.
    try:
        verifier = (
            PolicyBuilder()
            .store(Store([root]))
            .time(datetime.datetime.now(datetime.timezone.utc))
            .build_client_verifier()
        )
        verified = verifier.verify(device, [issuing])
        uris = [s.value for s in verified.subjects if isinstance(s, x509.UniformResourceIdentifier)]
        if uris != [spiffe_id]:
            problems.append(f"device.pem: verified subjects are {uris}, expected [{spiffe_id}]")
    except Exception as e:  # noqa: BLE001
        problems.append(f"device.pem: path validation fails: {e!r}")

    # The SPIFFE library's own X.509-SVID rules (leaf not a CA, digitalSignature, chain of CAs).
    try:
        chain = (directory / "device.pem").read_bytes() + (directory / "issuing.pem").read_bytes()
        svid = X509Svid.parse(chain, (directory / "device.key").read_bytes())
        if str(svid.spiffe_id) != spiffe_id:
            problems.append(f"py-spiffe reads SPIFFE ID {svid.spiffe_id}, expected {spiffe_id}")
        if len(svid.cert_chain) != 2:
            problems.append(f"py-spiffe reads a chain of {len(svid.cert_chain)}, expected 2")
    except Exception as e:  # noqa: BLE001
        problems.append(f"py-spiffe refuses the device SVID: {e!r}")

    if problems:
        print("\n".join(problems))
        return 1
    print(f"pyca/cryptography {__import__('cryptography').__version__} and py-spiffe accept "
          f"every certificate and the CRL ({len(revoked)} revoked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
