"""Elasticsearch 8.19 with security on: HTTPS with certificates made here (``cryptography``), basic auth against
file-realm users (``bin/elasticsearch-users``), a read-only role. Through the real CLI:

- certificates are verified by default: the node's certificate (signed by a CA of this test) is refused without
  ``--ca-certs``, with a message that names ``--ca-certs``;
- a wrong password is one clear HTTP 401 message;
- the read-only user can search, but its build fails before writing anything, with a clear HTTP 403 message;
- the password (and its base64 basic-auth form) never appears in output or logs at any verbosity, in
  report.json, or in error text.
"""
from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import logging
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from ceindex.cli import cli
from ceindex.testing.elasticsearch_node import ElasticsearchNode, FileUser, SecurityFiles
from tests.conftest import SAMPLE

pytestmark = pytest.mark.integration

ADMIN, READER = "ceadmin", "cereader"
SECRET = "Sup3r-s3cret/pa:ss@word"  # URL-hostile characters on purpose
READER_SECRET = "R3ader-only-secret"
READ_ONLY_ROLE = """
ceindex_reader:
  cluster: [monitor]
  indices:
    - names: ['*']
      privileges: [read, view_index_metadata, monitor]
"""


def _write_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a node certificate it signs (for 127.0.0.1 and localhost); PEM files (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(name("ceindex test CA")).issuer_name(name("ceindex test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.crt", folder / "node.crt", folder / "node.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def secure_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ElasticsearchNode]:
    ca, cert, key = _write_certs(tmp_path_factory.mktemp("certs"))
    security = SecurityFiles(cert=cert, key=key, ca_certs=ca, roles_yml=READ_ONLY_ROLE, admin=ADMIN,
                             users={ADMIN: FileUser(SECRET, ["superuser"]),
                                    READER: FileUser(READER_SECRET, ["ceindex_reader"])})
    node = ElasticsearchNode(security=security)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture()
def as_user(monkeypatch: pytest.MonkeyPatch, ceindex_home: Path):
    def use(user: str, password: str) -> None:
        monkeypatch.setenv("CEINDEX_OPENSEARCH_USER", user)
        monkeypatch.setenv("CEINDEX_OPENSEARCH_PASSWORD", password)
    return use


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _tls(node: ElasticsearchNode) -> list[str]:
    assert node.security is not None
    return ["--cluster", node.url, "--ca-certs", str(node.security.ca_certs), "--max-retries", "0"]


def _secrets() -> list[str]:
    forms = [SECRET, READER_SECRET]
    for user, password in ((ADMIN, SECRET), (READER, READER_SECRET)):
        forms.append(base64.b64encode(f"{user}:{password}".encode()).decode())  # the basic-auth header
    return forms


def test_the_node_certificate_is_verified_by_default(secure_node: ElasticsearchNode, as_user) -> None:
    as_user(ADMIN, SECRET)
    code, out = _run("search", "--cluster", secure_node.url, "--max-retries", "0", "--index", "x", "q")
    assert code == 2 and "certificate verify failed" in out and "--ca-certs" in out, out
    assert "Traceback" not in out


def test_a_wrong_password_is_one_clear_401(secure_node: ElasticsearchNode, as_user) -> None:
    as_user(ADMIN, "not-the-password")
    code, out = _run("search", *_tls(secure_node), "--index", "x", "q")
    assert code == 2 and "refused the credentials" in out and "HTTP 401" in out, out
    assert "CEINDEX_OPENSEARCH_PASSWORD" in out and "not-the-password" not in out


def test_reader_searches_but_cannot_build_and_no_secret_leaks(
    secure_node: ElasticsearchNode, as_user, tiny_ce_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    index = f"sec-{uuid.uuid4().hex[:8]}"
    outputs = []
    as_user(ADMIN, SECRET)
    code, out = _run("-vv", "build", *_tls(secure_node), "--index", index, "--data", str(SAMPLE),
                     "--encoder", f"ce:{tiny_ce_dir},layer=1", "--max-length", "64", "--no-progress")
    outputs.append(out)
    assert code == 0 and "count check: ok" in out, out

    as_user(READER, READER_SECRET)
    code, out = _run("-vv", "search", *_tls(secure_node), "--index", index, "--no-rerank", "--json",
                     "lithium battery charging")
    outputs.append(out)
    assert code == 0, out
    answer, _ = json.JSONDecoder().raw_decode(out[out.index("[\n  {"):])  # -vv logs come before and after it
    hits = answer[0]["hits"]
    assert len(hits) == 10

    report = tmp_path / "report"
    code, out = _run("-vv", "eval", *_tls(secure_node), "--index", index, "--data", str(SAMPLE), "--systems", "bm25",
                     "--out", str(report), "--no-progress")
    outputs.append(out)
    assert code == 0, out

    other = f"sec-{uuid.uuid4().hex[:8]}"
    code, out = _run("-vv", "build", *_tls(secure_node), "--index", other, "--data", str(SAMPLE),
                     "--encoder", f"ce:{tiny_ce_dir},layer=1", "--max-length", "64", "--no-progress")
    outputs.append(out)
    assert code == 2 and "denied permission" in out and "HTTP 403" in out, out
    assert READER in out and "Traceback" not in out
    as_user(ADMIN, SECRET)
    code, listing = _run("search", *_tls(secure_node), "--index", other, "q")  # nothing was written for it
    assert code == 2 and f"no index or alias named '{other}'" in listing, listing

    texts = outputs + [caplog.text] + [p.read_text(encoding="utf-8", errors="replace")
                                       for p in report.rglob("*") if p.suffix in (".json", ".md", ".html")]
    assert (report / "report.json").exists()
    for secret in _secrets():
        assert all(secret not in text for text in texts), secret
