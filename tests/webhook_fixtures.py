"""Real webhook requests recorded by others, kept in tests/fixtures/webhooks (see SOURCES.md)."""

import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"

# A body is <name>.json, or .form (form-encoded) / .txt (a plain test vector) when it is not JSON.
_BODY_SUFFIXES = (".json", ".form", ".txt")


def load_sample(provider: str, name: str) -> tuple[dict[str, str], bytes, str | None]:
    """Return (headers, raw body bytes, secret or None) of fixtures/webhooks/<provider>/<name>.*

    The headers file's "secret" key is the webhook secret the source used, not an HTTP header,
    so it is returned separately.
    """
    folder = FIXTURES / provider
    headers = json.loads((folder / f"{name}.headers.json").read_text(encoding="utf-8"))
    secret = headers.pop("secret", None)
    for suffix in _BODY_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if path.exists():
            return headers, path.read_bytes(), secret
    raise FileNotFoundError(f"no body for sample {provider}/{name}")


def sample_names(provider: str | None = None) -> list[tuple[str, str]]:
    """Every (provider, name) pair in the fixtures, optionally for one provider directory."""
    pattern = f"{provider}/*.headers.json" if provider else "*/*.headers.json"
    return sorted(
        (path.parent.name, path.name.removesuffix(".headers.json"))
        for path in FIXTURES.glob(pattern)
    )


def content_type(headers: dict[str, str]) -> str:
    """The sample's Content-Type header (any casing), defaulting to JSON like most hosts send."""
    for key, value in headers.items():
        if key.lower() == "content-type":
            return value
    return "application/json"
