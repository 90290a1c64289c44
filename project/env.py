"""Reading settings from the environment; bad values stop start-up with a message naming them.

Used by project/settings.py and by management commands that read their own variables
(ensure_superuser), so that NAME_FILE (Docker/compose secrets) works the same everywhere.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

TRUE_SPELLINGS = {"true", "1", "yes", "on"}
FALSE_SPELLINGS = {"false", "0", "no", "off"}


def env_str(name: str, default: str = "") -> str:
    """A string variable; NAME_FILE (Docker/compose secrets) wins over NAME when it is set."""
    file_path = os.environ.get(f"{name}_FILE", "")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    """A boolean variable. Anything but a true/false spelling stops start-up, because a typo such as
    ALLOW_UNSIGNED_WEBHOOKS=ture silently meaning "false" (or "true") is how servers get exposed."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value in TRUE_SPELLINGS:
        return True
    if value in FALSE_SPELLINGS:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use true or false")


def _env_number(name, default, minimum, convert, noun):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = convert(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not {noun}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_int(name: str, default: int, minimum: int = 0) -> int:
    return _env_number(name, default, minimum, int, "a whole number")


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    return _env_number(name, default, minimum, float, "a number")


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]
