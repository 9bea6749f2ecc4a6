"""Keep secrets out of everything rllib-mlflow writes: params, tags, metric names, the
journal, error messages and logs.

Two rules, applied at any depth of dicts and lists:
- a value under a secret-looking key (`api_key`, `db_password`, `my_creds`, `authToken`,
  ...) becomes `***`; a key is secret-looking when one of its words is in `SECRET_WORDS`;
- the credentials of a URL with userinfo become `***`, whatever the key
  (`postgresql://user:***@host/db`).

Standard library only: the Tune driver and the light install use it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
SECRET_WORDS = frozenset(
    "key apikey accesskey secretkey privatekey secret secrets token tokens authtoken "
    "accesstoken refreshtoken password passwords passwd pwd passphrase credential credentials "
    "cred creds auth authorization private cookie cookies session sessionid signature sig "
    "dsn connstr connectionstring".split()
)
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)(?P<user>[^:/?#@\s]*)(?::(?P<password>[^/?#@\s]*))?@"
)


def is_secret_key(key: Any) -> bool:
    """True when a word of `key` (split at '_', '-', '/', '.', case changes) names a secret,
    or two adjacent words do ('connection_string')."""
    words = [w.lower() for w in _WORD.findall(str(key))]
    pairs = (a + b for a, b in zip(words, words[1:]))
    return any(w in SECRET_WORDS for w in words) or any(p in SECRET_WORDS for p in pairs)


def mask_urls(text: str) -> str:
    """`text` with the credentials of every URL replaced: `scheme://user:***@host`."""

    def mask(match: re.Match) -> str:
        if match.group("password") is None:  # a bare token as user name
            return f"{match.group('scheme')}{MASK}@"
        return f"{match.group('scheme')}{match.group('user')}:{MASK}@"

    return _URL_USERINFO.sub(mask, text)


def redact(value: Any) -> Any:
    """A copy of `value` with secrets masked, walking dicts, lists and tuples."""
    if isinstance(value, Mapping):
        return {k: MASK if is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return mask_urls(value)
    return value


def redact_text(value: Any) -> str:
    """`str(value)` with secrets masked, also those inside containers."""
    return mask_urls(str(redact(value)))


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A (nested) config as MLflow params, keys joined with '/' as Ray's MLflow callback does
    (lists stay one value), with every secret masked."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = mask_urls(f"{prefix}{key}")
        if is_secret_key(key):
            params[name] = MASK
        elif isinstance(value, Mapping) and value:
            params.update(flat_params(value, f"{name}/"))
        else:
            params[name] = redact_text(value)
    return params


class RedactingFilter(logging.Filter):
    """Masks URL credentials in a log record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_urls(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_urls(logging.Formatter().formatException(record.exc_info))
        return True


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` whose records never carry URL credentials."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
