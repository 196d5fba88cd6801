"""The one place that masks secrets in Redis URLs before they reach a log line or an error."""

from __future__ import annotations

import re

MASK = "***"

#: Schemes whose URLs :func:`redact_text` finds inside free text.
URL_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)

# Longest schemes first, so that "redis+sentinel" is not read as "redis".
_SCHEME_ALTERNATIVES = "|".join(re.escape(s) for s in sorted(URL_SCHEMES, key=len, reverse=True))
_URL_IN_TEXT = re.compile(rf"(?<![\w+.-])(?:{_SCHEME_ALTERNATIVES})://[^\s'\"<>`]+", re.IGNORECASE)
_SECRET_PARAMETER = re.compile(r"pass|secret|token|key|auth|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with the password of its user info and the values of secret-looking query
    parameters (``password``, ``sentinel_password``, ``token``, anything holding ``pass``,
    ``secret``, ``token`` or ``key``) replaced by ``***``; the rest is kept for diagnosis.

    >>> redact_url("redis+sentinel://u:pw@h:26379/m?sentinel_password=x&db=1")
    'redis+sentinel://u:***@h:26379/m?sentinel_password=***&db=1'
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return _redact_query(url)
    # The authority ends at the first "/", "?" or "#"; its user info at its last "@".
    authority_end = len(rest)
    for delimiter in "/?#":
        index = rest.find(delimiter)
        if index != -1:
            authority_end = min(authority_end, index)
    authority, tail = rest[:authority_end], rest[authority_end:]
    user_info, at, hosts = authority.rpartition("@")
    if at and ":" in user_info:
        user = user_info.partition(":")[0]
        authority = f"{user}:{MASK}@{hosts}"
    return f"{scheme}://{authority}{_redact_query(tail)}"


def redact_text(text: str) -> str:
    """``text`` with every Redis URL in it (see :data:`URL_SCHEMES`) passed through
    :func:`redact_url`: for exception messages that quote a URL."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def _redact_query(tail: str) -> str:
    before, question, query = tail.partition("?")
    if not question:
        return tail
    query, hash_sign, fragment = query.partition("#")
    parameters = []
    for parameter in query.split("&"):
        name, equals, value = parameter.partition("=")
        if equals and value and _SECRET_PARAMETER.search(name):
            parameter = f"{name}={MASK}"
        parameters.append(parameter)
    return f"{before}?{'&'.join(parameters)}{hash_sign}{fragment}"
