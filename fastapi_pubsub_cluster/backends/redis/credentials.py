"""Redis credentials as the original package took them, turned into one URL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from ...errors import ConfigurationError
from ...redaction import URL_SCHEMES, redact_url

_URL_PREFIXES = tuple(f"{scheme}://" for scheme in URL_SCHEMES)


@dataclass(slots=True)
class RedisCredentials:
    """Where Redis is, as the original ``fastapi-pubsub`` took it."""

    host: str = "localhost"
    port: int = 6379
    username: str | None = None
    password: str | None = None
    db: int = 0
    ssl: bool = False

    def to_url(self) -> str:
        """The equivalent ``redis://`` (or ``rediss://``) URL."""
        scheme = "rediss" if self.ssl else "redis"
        auth = ""
        if self.username or self.password:
            user = quote(self.username or "", safe="")
            auth = f"{user}:{quote(self.password or '', safe='')}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{int(self.port)}/{int(self.db)}"


RedisCredentialsLike = RedisCredentials | Mapping[str, object] | str


def redis_url_from(credentials: RedisCredentialsLike | object) -> str:
    """Turn a URL, a credentials dict or a :class:`RedisCredentials` into a Redis URL.

    Any object with the original class's attributes (host, port, ...) is read too.
    """
    if isinstance(credentials, str):
        if not credentials.startswith(_URL_PREFIXES):
            raise ConfigurationError(
                f"Redis URL must start with one of {', '.join(_URL_PREFIXES)}: "
                f"{redact_url(credentials)!r}"
            )
        return credentials
    if isinstance(credentials, RedisCredentials):
        return credentials.to_url()
    if isinstance(credentials, Mapping) and "sentinels" in credentials:
        return _sentinel_url(credentials)
    if isinstance(credentials, Mapping):
        unknown = set(credentials) - {"host", "port", "username", "password", "db", "ssl"}
        if unknown:
            raise ConfigurationError(f"unknown Redis credential keys: {sorted(unknown)}")
        try:
            return RedisCredentials(
                host=str(credentials.get("host") or "localhost"),
                port=int(str(credentials.get("port") or 6379)),
                username=_optional_str(credentials.get("username")),
                password=_optional_str(credentials.get("password")),
                db=int(str(credentials.get("db") or 0)),
                ssl=bool(credentials.get("ssl", False)),
            ).to_url()
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis credentials: {exc}") from exc
    # Objects with the original class's attributes (duck typing, as the original
    # fastapi-pubsub package read __dict__).
    attrs = {
        key: getattr(credentials, key)
        for key in ("host", "port", "username", "password", "db")
        if hasattr(credentials, key)
    }
    if not attrs:
        raise ConfigurationError(f"cannot read Redis credentials from {type(credentials).__name__}")
    return redis_url_from(attrs)


def _optional_str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _sentinel_url(credentials: Mapping[str, object]) -> str:
    """``{"sentinels": [(host, port), ...], "service_name": ..., "password": ..., "db": ...}``."""
    unknown = set(credentials) - {"sentinels", "service_name", "username", "password", "db", "ssl"}
    if unknown:
        raise ConfigurationError(f"unknown Sentinel credential keys: {sorted(unknown)}")
    sentinels = credentials["sentinels"]
    service = credentials.get("service_name")
    if not isinstance(sentinels, list | tuple) or not sentinels or not service:
        raise ConfigurationError("Sentinel credentials need 'sentinels' and 'service_name'")
    try:
        hosts = ",".join(f"{host}:{int(port)}" for host, port in sentinels)
        db = int(str(credentials.get("db") or 0))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid Sentinel credentials: {exc}") from exc
    auth = ""
    username = _optional_str(credentials.get("username"))
    password = _optional_str(credentials.get("password"))
    if username or password:
        auth = f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"
    scheme = "rediss+sentinel" if credentials.get("ssl") else "redis+sentinel"
    return f"{scheme}://{auth}{hosts}/{quote(str(service), safe='')}/{db}"
