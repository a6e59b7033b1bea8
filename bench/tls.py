"""TLS for the benchmarks: one ECDSA P-256 certificate with its PKCS#8 key, made here
with `cryptography`, that every server serves (bench.py's tls_* workloads,
callgrind.py --tls), and the flags each server takes for it."""

import datetime
import http.client
import os
import ssl


def make_certificate(directory):
    """A self-signed localhost certificate and its key, as PEM files in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def server_args(server, cert, key):
    """The flags that make `server` (rgun, Granian, Gunicorn) serve `cert` and `key`."""
    if server == "Granian":
        return ["--ssl-certificate", cert, "--ssl-keyfile", key]
    return ["--certfile", cert, "--keyfile", key]


def connection(port, timeout):
    """An HTTPS client connection that trusts our own certificate."""
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ssl._create_unverified_context())
