#!/usr/bin/env python3
"""A private certificate authority and the certificates the local stack serves HTTPS with.

Usage: tls_certs.py DIR [--name NAME]

Writes into DIR (created if needed; private keys with mode 0600):
  ca.pem, ca-key.pem          a CA ("NAME CA"), valid 365 days
  server.pem, server-key.pem  the endpoint's certificate for 127.0.0.1 and localhost
  client.pem, client-key.pem  a client certificate (CN "NAME client") for mutual TLS

Nothing is downloaded: the keys are ECDSA P-256 made here with the `cryptography` package
(pinned in scripts/requirements-stack.txt). Files that exist and stay valid for another 7
days are kept, so a restarted stack serves the same CA; otherwise all of them are made anew.
Prints the path of ca.pem.
"""

import argparse
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"]
VALID_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=7)


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def still_valid(directory):
    try:
        for file in FILES:
            if not os.path.exists(os.path.join(directory, file)):
                return False
        for file in ("ca.pem", "server.pem", "client.pem"):
            with open(os.path.join(directory, file), "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
            if cert.not_valid_after_utc - now() < RENEW_BEFORE:
                return False
        return True
    except (OSError, ValueError):
        return False


def issue(subject, key, issuer, issuer_key, *, ca, usage, sans=None):
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(minutes=5))
        .not_valid_after(now() + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, encipher_only=False, decipher_only=False),
            critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write(directory, file, data, private=False):
    path = os.path.join(directory, file)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--name", default="clickstream stack")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    if not still_valid(args.dir):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = name(f"{args.name} CA")
        ca = issue(ca_name, ca_key, ca_name, ca_key, ca=True, usage=None)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = issue(name("localhost"), server_key, ca_name, ca_key, ca=False,
                       usage=ExtendedKeyUsageOID.SERVER_AUTH,
                       sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = issue(name(f"{args.name} client"), client_key, ca_name, ca_key, ca=False,
                       usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        write(args.dir, "ca-key.pem", pem_key(ca_key), private=True)
        write(args.dir, "server-key.pem", pem_key(server_key), private=True)
        write(args.dir, "client-key.pem", pem_key(client_key), private=True)
        write(args.dir, "server.pem", pem(server))
        write(args.dir, "client.pem", pem(client))
        write(args.dir, "ca.pem", pem(ca))  # last: its presence means the set is complete
        print(f"tls_certs: made a CA and certificates in {args.dir}", file=sys.stderr)
    print(os.path.join(os.path.abspath(args.dir), "ca.pem"))


if __name__ == "__main__":
    main()
