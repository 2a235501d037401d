"""One redaction for everything the job writes or logs: no secrets at rest (model-free).

- ``redact_value(obj)``: a config / JSON payload with every credential-like key's value replaced
  (``key``, ``secret``, ``token``, ``password``, ``aws_secret_access_key``, ``sessionToken``, ...
  at any depth) and every URI string passed through ``redact_uri``.
- ``redact_uri(uri)``: the URI as it may be published: no ``user:password@``, and for web URIs
  (http, https) no query string or fragment, where signed URLs keep their signature
  (``X-Amz-Signature``, ``X-Amz-Credential``, ``Signature``, ``sig``, ``token``, ...).
- ``redact_text(text)``: the same for URIs inside free text (errors, log lines), plus
  ``key=value`` pairs whose key is credential-like.
- ``RedactingFilter``: a logging filter; every record of the ``unsafe2safe_ray`` loggers is
  redacted (installed on import, see ``install_log_redaction``).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"

# Words that make a mapping key a credential. A key is split into words (snake, kebab and camel
# case), so ``max_new_tokens`` is not a secret but ``session_token`` and ``SecretAccessKey`` are.
_SECRET_WORDS = frozenset({
    "key", "secret", "secrets", "token", "password", "passwd", "pwd", "passphrase", "credential",
    "credentials", "signature", "sig", "auth", "authorization", "apikey", "cookie", "sas",
    "privatekey", "connectionstring",
})
# Query parameters of signed URLs (S3 / GCS / Azure presigned), checked case-insensitively on
# top of the secret words (for non-web URIs whose query string is kept otherwise).
_SECRET_QUERY = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature",
    "x-goog-credential", "awsaccesskeyid", "googleaccessid", "signature", "sig", "se", "sp", "sv",
    "st", "skoid", "sktid", "sks", "token", "access_token", "code", "expires",
})
_WEB_SCHEMES = frozenset({"http", "https"})


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_secret_key(name: Any) -> bool:
    """Whether a mapping key names a credential (``key``, ``aws_secret_access_key``, ...)."""
    if not isinstance(name, str):
        return False
    words = _words(name)
    return bool(set(words) & _SECRET_WORDS) or "".join(words) in _SECRET_WORDS


def redact_uri(uri: str) -> str:
    """``uri`` without credentials: userinfo dropped; web URIs without query and fragment;
    other URIs (s3, gs, ...) keep only non-secret query parameters. Paths without a scheme
    (local files, where ``?`` and ``#`` are ordinary characters) come back unchanged."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return REDACTED
    if not parts.scheme or parts.scheme == "file":
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.scheme.lower() in _WEB_SCHEMES:
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    query = parts.query
    if query:
        kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
                if not is_secret_key(k) and k.lower() not in _SECRET_QUERY]
        query = urlencode(kept)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment if not query else ""))


# A URI inside free text: scheme://, then anything up to whitespace or a closing quote/bracket.
_URI_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>)\]}]+")
# key=value / key: value / "key": "value" pairs in text (error messages, reprs of dicts).
_PAIR_IN_TEXT = re.compile(
    r"""(?P<k>['"]?(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)['"]?\s*[:=]\s*)(?P<v>'[^']*'|"[^"]*"|[^\s,;&}\]]+)""")


def redact_text(text: str) -> str:
    """Free text (an error, a log line) with URIs redacted and credential-like pairs masked."""
    if not isinstance(text, str) or not text:
        return text
    text = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)

    def pair(m: re.Match) -> str:
        name = m.group("name")
        if not is_secret_key(name):
            return m.group(0)
        if name.lower() in ("key", "keys") and m.group("k")[:1] not in ("'", '"'):
            return m.group(0)  # prose ("expects key=value"); a dict repr quotes its keys
        v = m.group("v")
        quote = v[0] if v[:1] in ("'", '"') else ""
        return f"{m.group('k')}{quote}{REDACTED}{quote}"

    return _PAIR_IN_TEXT.sub(pair, text)


def redact_value(value: Any) -> Any:
    """A JSON-like payload with credential-like keys masked and URI strings redacted (a copy)."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "", {}, []) else redact_value(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    if isinstance(value, str):
        return redact_text(value) if "://" in value or "=" in value or ":" in value else value
    return value


class RedactingFilter(logging.Filter):
    """Redacts a record's message and arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record stays as it is
            return True
        record.msg = redact_text(message)
        record.args = None
        return True


_FILTER = RedactingFilter()
_PACKAGE = "unsafe2safe_ray"


def install_log_redaction() -> None:
    """Redact every record of the package's loggers. A logger's filters see only records made
    by that logger, not its children's, so records are redacted where they are created."""
    package_logger = logging.getLogger(_PACKAGE)
    if _FILTER not in package_logger.filters:
        package_logger.addFilter(_FILTER)
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_u2s_redacting", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if record.name == _PACKAGE or record.name.startswith(_PACKAGE + "."):
            _FILTER.filter(record)
        return record

    redacting_factory._u2s_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)


install_log_redaction()
