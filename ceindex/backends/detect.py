"""Which engine (and version) answers at a cluster URL: OpenSearch or Elasticsearch, read before a client is made.

``GET /`` names the distribution (OpenSearch: ``version.distribution``) and the version; Elasticsearch marks every
answer with the ``X-elastic-product: Elasticsearch`` header, and where ``GET /`` is refused (405 in the integ-test
distribution) its ``_nodes`` API gives the version. The probe verifies certificates, sends the credentials and
turns each failure into one clear message, like the backends do.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ceindex.backends.cluster import CREDENTIALS_HINT, RETRY_STATUSES, with_backoff
from ceindex.config import OpenSearchConfig, opensearch_credentials
from ceindex.errors import BackendError
from ceindex.redact import redact

OPENSEARCH, ELASTICSEARCH = "opensearch", "elasticsearch"
SUPPORTED = {OPENSEARCH: (2, 3), ELASTICSEARCH: (8,)}  # engine -> major versions (each run by the test suite)
SUPPORTED_TEXT = "OpenSearch 2.x-3.x, Elasticsearch 8.x"


@dataclass(frozen=True)
class Engine:
    name: str  # OPENSEARCH or ELASTICSEARCH
    version: str  # e.g. "8.19.21"

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    def __str__(self) -> str:
        return f"{'OpenSearch' if self.name == OPENSEARCH else 'Elasticsearch'} {self.version}"


def detect_engine(config: OpenSearchConfig) -> Engine:
    """The engine at ``config.url``; a BackendError when it cannot be reached, refuses us, or is unsupported."""
    url = (config.url or "").rstrip("/")
    status, headers, body = _get(config, url, "/")
    elastic = headers.get("x-elastic-product") == "Elasticsearch"
    version = body.get("version", {}) if isinstance(body, dict) else {}
    if status == 200 and version.get("distribution") == OPENSEARCH:
        engine = Engine(OPENSEARCH, str(version.get("number", "")))
    elif elastic or (status == 200 and "build_flavor" in version):
        if status == 200 and version.get("number"):
            engine = Engine(ELASTICSEARCH, str(version["number"]))
        else:
            engine = Engine(ELASTICSEARCH, _node_version(config, url))
    else:
        found = f"HTTP {status}" + (f", version {version.get('number')}" if version.get("number") else "")
        raise BackendError(f"{redact(url)} is not OpenSearch or Elasticsearch (GET / answered {found}); "
                           f"ceindex supports {SUPPORTED_TEXT}")
    if engine.major not in SUPPORTED[engine.name]:
        raise BackendError(f"{redact(url)} runs {engine}, which ceindex does not support; it supports {SUPPORTED_TEXT}")
    return engine


def _node_version(config: OpenSearchConfig, url: str) -> str:
    status, _headers, body = _get(config, url, "/_nodes/_local/_none")
    nodes = body.get("nodes", {}) if isinstance(body, dict) else {}
    versions = sorted({str(node.get("version", "")) for node in nodes.values()})
    if status != 200 or not versions:
        raise BackendError(f"{redact(url)} is Elasticsearch but its version could not be read (GET /_nodes answered "
                           f"HTTP {status}); ceindex supports {SUPPORTED_TEXT}")
    return versions[0]


def _get(config: OpenSearchConfig, url: str, path: str) -> tuple[int, dict[str, str], Any]:
    """(status, lower-cased headers, JSON body or None) of ``GET url+path``; 401/403 and transport failures raise."""
    import urllib3

    headers = {"Accept": "application/json"}
    credentials = opensearch_credentials()
    if credentials:
        headers.update(urllib3.make_headers(basic_auth=f"{credentials[0]}:{credentials[1]}"))
    pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED" if config.verify_certs else "CERT_NONE",
                               ca_certs=config.ca_certs, timeout=urllib3.Timeout(total=config.timeout), retries=False)
    if not config.verify_certs:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    shown = redact(url)

    def once() -> Any:
        response = pool.request("GET", url + path, headers=headers)
        if response.status in RETRY_STATUSES:
            raise _Busy(response)
        return response

    def retryable(exc: Exception) -> bool:
        return isinstance(exc, _Busy) or (isinstance(exc, urllib3.exceptions.HTTPError)
                                          and not isinstance(exc, urllib3.exceptions.SSLError))

    try:
        response = with_backoff(once, config.max_retries, retryable, f"GET {shown}{path}")
    except _Busy as exc:
        response = exc.response
    except urllib3.exceptions.SSLError as exc:
        raise BackendError(_tls_message(shown, exc)) from None
    except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.NameResolutionError):  # before TimeoutError
        raise BackendError(f"cannot reach the cluster at {shown} while connecting: is the cluster running?") from None
    except urllib3.exceptions.TimeoutError:
        raise BackendError(f"the cluster at {shown} timed out while connecting; raise --timeout or check the cluster") from None
    except urllib3.exceptions.HTTPError as exc:
        if "ssl" in str(exc).lower() or "certificate" in str(exc).lower():
            raise BackendError(_tls_message(shown, exc)) from None
        raise BackendError(f"cannot reach the cluster at {shown} while connecting: is the cluster running?") from None
    if response.status == 401:
        raise BackendError(f"the cluster at {shown} refused the credentials while connecting (HTTP 401); {CREDENTIALS_HINT}")
    if response.status == 403:
        raise BackendError(f"the cluster at {shown} denied permission while connecting (HTTP 403): the user needs the "
                           "'monitor' cluster privilege to read the engine and version")
    try:
        body = json.loads(response.data or b"null")
    except ValueError:
        body = None
    return response.status, {k.lower(): v for k, v in response.headers.items()}, body


class _Busy(Exception):
    def __init__(self, response: Any) -> None:
        super().__init__(f"HTTP {response.status}")
        self.response = response


def _tls_message(url: str, exc: Exception) -> str:
    text = str(exc).lower()
    if "wrong version number" in text or "record layer failure" in text or "http request" in text:
        return (f"{url} does not speak TLS (the server answered in plain HTTP) while connecting; use "
                f"{url.replace('https://', 'http://', 1)} instead")
    reason = "certificate verify failed" if "certificate verify failed" in text else type(exc).__name__
    return (f"TLS failure talking to {url} while connecting: {reason}; pass the cluster's CA bundle with --ca-certs "
            "(or --no-verify-certs for a throwaway test cluster)")
