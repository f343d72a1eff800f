"""
The one credential redactor: every log filter and every text that leaves a task (manifest error messages,
transient-error text, failure alerts, the coverage page) goes through :func:`redact`.

It replaces AWS access key ids, secret keys, session tokens, signatures and ``Authorization`` values
wherever they sit next to a name that says what they are, in any of the forms botocore, boto3, Airflow and
Python print: ``key=value``, ``key: value``, JSON, backslash-escaped JSON, Python reprs (``'key': b'...'``,
``key='...'``), XML (STS's answers), query strings (presigned URLs) and connection URIs. Key names match
ignoring case and separators (``SecretAccessKey``, ``secret_access_key``, ``aws_secret_access_key``,
``X-Amz-Security-Token``, ``AWS_SESSION_TOKEN``...). Anything shaped like an access key id, or like an STS
session token, is replaced even without a name. Airflow's masker (the secrets registered with
``mask_secret``) is applied on top by the log filter.

Importing this module imports nothing but the standard library: the API server's plugin uses it too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pkgutil
import re
import threading
from collections.abc import Callable

KEY_ID_MARK = "[redacted-key-id]"
SECRET_MARK = "[redacted]"  # noqa: S105 - the replacement text, not a password
SCRUB_LIMIT = 500

# Key names, as a regex fragment each (matched ignoring case; "_" or "-" between words, or nothing).
_SEP = r"[_-]?"
_KEY_ID_NAMES = rf"(?:aws{_SEP})?access{_SEP}key(?:{_SEP}id)?"
_SECRET_NAMES = rf"(?:aws{_SEP})?secret(?:{_SEP}access)?(?:{_SEP}key)?|password"
_TOKEN_NAMES = rf"(?:x{_SEP}amz{_SEP}|aws{_SEP})?(?:(?:session|security){_SEP})?token"
_SIGNATURE_NAMES = rf"(?:x{_SEP}amz{_SEP})?signature"
_CREDENTIAL_NAMES = rf"(?:x{_SEP}amz{_SEP})?credential"
_AUTHORIZATION_NAMES = r"authorization"

# The name's own closing quote (possibly escaped, as in JSON inside JSON), the separator, and the value's
# opening quote (possibly a bytes literal's ``b'``, possibly escaped; a ``b'`` is never taken for the value).
_AROUND = r"(?P<lead>(?:\\*[\"'])?\s*[:=]\s*(?:b?\\*[\"']|(?!b\\*[\"'])))"
# A value ends at whitespace, a quote, a backslash (an escaped quote) or a delimiter of the form around it.
_VALUE = r"[^\s\"'\\&,;<>(){}\[\]|]+"
_HEADER_VALUE = r"[^\"'\\\r\n]+"  # an Authorization header's value has spaces and commas
_KEY_ID_VALUE = r"[^\s\"'\\&,;<>(){}\[\]|/%]+"  # X-Amz-Credential: the key id, before "/date/region/..."


def _named(names: str, value: str) -> re.Pattern[str]:
    # Not inside a longer word ("NextToken" is no token; "SecretString" no secret).
    return re.compile(rf"(?<![A-Za-z0-9])(?P<name>{names}){_AROUND}(?P<value>{value})", re.IGNORECASE)


_KEY_ID_PREFIXES = "AKIA|ASIA|ABIA|ACCA|AIDA|AROA|AIPA|ANPA|ANVA|APKA|ASCA"
_XML_NAMES = r"AccessKeyId|SecretAccessKey|SessionToken|SecurityToken|Signature"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # STS's and IAM's XML answers.
    (
        re.compile(rf"(?P<open><(?:[\w-]+:)?(?P<tag>{_XML_NAMES})>)(?P<value>[^<]+)(?=</)", re.IGNORECASE),
        "xml",
    ),
    (_named(_AUTHORIZATION_NAMES, _HEADER_VALUE), SECRET_MARK),
    (_named(_SECRET_NAMES, _VALUE), SECRET_MARK),
    (_named(_TOKEN_NAMES, _VALUE), SECRET_MARK),
    (_named(_SIGNATURE_NAMES, _VALUE), SECRET_MARK),
    (_named(_CREDENTIAL_NAMES, _KEY_ID_VALUE), KEY_ID_MARK),
    (_named(_KEY_ID_NAMES, _VALUE), KEY_ID_MARK),
    # A password in a connection URI: scheme://login:password@host.
    (re.compile(r"(?P<lead>://[^:/@\s\"']*:)(?P<value>[^@/\s\"']+)(?=@)"), SECRET_MARK),
    # Anything shaped like an access key id (long-term AKIA, temporary ASIA, and the other unique-id
    # prefixes), e.g. in a SigV2 "AWS AKIA...:signature" or an error message.
    (re.compile(rf"(?<![A-Z0-9])(?:{_KEY_ID_PREFIXES})[A-Z0-9]{{12,124}}(?![A-Z0-9])"), KEY_ID_MARK),
    # STS session tokens without a name: they start with the base64 of their own header.
    (re.compile(r"(?:IQoJb3JpZ2lu|FwoGZXIvYXdz|FQoGZXIvYXdz)[A-Za-z0-9+/=%]{16,}"), SECRET_MARK),
)


def _replacer(mark: str) -> Callable[[re.Match[str]], str]:
    """What a match becomes: its name and separators kept, the value replaced by ``mark``."""

    def replace(match: re.Match[str]) -> str:
        groups = match.groupdict()
        if mark == "xml":
            return groups["open"] + (KEY_ID_MARK if groups["tag"].lower() == "accesskeyid" else SECRET_MARK)
        return (groups.get("name") or "") + (groups.get("lead") or "") + mark

    return replace


_COMPILED = tuple((pattern, _replacer(mark)) for pattern, mark in _PATTERNS)


def redact(text: str) -> str:
    """``text`` with every access key id, secret key, session token and signature replaced."""
    for pattern, replace in _COMPILED:
        text = pattern.sub(replace, text)
    return text


def scrub(text: str, limit: int = SCRUB_LIMIT) -> str:
    """:func:`redact`, then bound the length (for texts that are stored or sent: ledgers, alerts)."""
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _masked(text: str) -> str:
    """Airflow's masker (every secret registered with ``mask_secret``) where Airflow is importable."""
    try:
        # Airflow 3.3 has no public redact: its deprecated public path (airflow.sdk.execution_time.
        # secrets_masker) names this module as the one to use, and airflow.sdk.log uses it too.
        from airflow.sdk._shared.secrets_masker import redact as mask
    except ImportError:  # outside Airflow: the patterns alone
        return text
    return str(mask(text))


class CredentialLogFilter(logging.Filter):
    """Redact credentials (:func:`redact`, then Airflow's masker) in a record's message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: do not let it through unredacted
            record.msg, record.args = "[record withheld: it could not be formatted]", None
            return True
        clean = _masked(redact(message))
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text, record.exc_info = _masked(redact(record.exc_text)), None
        if record.stack_info:
            record.stack_info = _masked(redact(record.stack_info))
        return True


LOG_FILTER = CredentialLogFilter()

# Packages whose loggers see requests, signatures and answers: botocore's wire loggers (request headers,
# canonical requests, response bodies — AssumeRole's carries the new secret before it can be registered with
# the masker), boto3's, s3transfer's and urllib3's.
AWS_LOGGER_PACKAGES = ("botocore", "boto3", "s3transfer", "urllib3", "aiobotocore")
# The loggers' names, found on disk once per process (loggers are process-wide, and walking the packages is
# the slow part); each call then only checks that every one of them still has the filter.
_GUARD_LOCK = threading.Lock()
_GUARDED: set[str] = set()


def _module_names(package: str) -> list[str]:
    """``package`` and every module below it, found on disk (nothing is imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return [package] if spec else []
    names = [package]
    todo = [(list(spec.submodule_search_locations), package)]
    while todo:
        paths, prefix = todo.pop()
        for info in pkgutil.iter_modules(paths):
            name = f"{prefix}.{info.name}"
            names.append(name)
            if info.ispkg:
                todo.append(([os.path.join(path, info.name) for path in paths], name))
    return names


def aws_logger_names() -> list[str]:
    """The logger of every module of the AWS packages (each logs as ``logging.getLogger(__name__)``)."""
    return [name for package in AWS_LOGGER_PACKAGES for name in _module_names(package)]


def guard_botocore_logs() -> None:
    """
    Put :class:`CredentialLogFilter` on the logger of every module of botocore, boto3, s3transfer and
    urllib3 (a logger's filter does not see its children's records, hence each). Idempotent and cheap after
    the first call. Called by every task (``tasks.settings_from``), before every AssumeRole, and by the
    coverage page before it builds an S3 client: every process that talks to AWS.
    """
    with _GUARD_LOCK:
        if not _GUARDED:
            _GUARDED.update(aws_logger_names())
        for name in _GUARDED:
            logger = logging.getLogger(name)
            if LOG_FILTER not in logger.filters:
                logger.addFilter(LOG_FILTER)
