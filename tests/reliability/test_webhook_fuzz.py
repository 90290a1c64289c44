"""Property-based fuzzing of the webhook endpoint through a real gunicorn.

Seeds are the real deliveries in tests/fixtures/webhooks (GitHub, GitLab, Gitea/Forgejo/Gogs,
Bitbucket Cloud and Server); hypothesis mutates their bodies (JSON fields, truncation, bytes,
encodings, form encoding, sizes past MAX_WEBHOOK_BYTES), their headers (dropped, re-cased,
duplicated, foreign, another host's), their content types, their signatures (right, wrong, the
source's secret, another host's header, missing) and the transport (Content-Length or chunked).
For every request, with the database up:

- never a 5xx, and a JSON answer from the view;
- exactly one Delivery for each request that reaches a repository, except a 429 past the flood
  limit, which is counted in its RejectionWindow instead (the fuzz server's limit is raised, so
  this is rare);
- nothing queued without a valid signature: a delivery that queued or joined a sync was signed
  with the repository's secret over the exact body sent.

FUZZ_EXAMPLES sets the number of examples (see examples(): 10,000 in CI's PostgreSQL pass);
RELIABILITY_SEED replays a run (its seed is printed)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from gitdeploy.models import Delivery, RejectionWindow, SyncRun
from tests.conftest import is_sqlite
from tests.reliability.stack import gunicorn, http_request, seed
from tests.webhook_fixtures import load_sample, sample_names

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.processes,
    pytest.mark.reliability,
]

SECRET = "fuzz-secret-Zq8vN2"
BRANCH = "master"  # most of the recorded pushes are to master
MAX_BODY = 64 * 1024  # the fuzz server's MAX_WEBHOOK_BYTES, so 413 is reached with small bodies


def examples() -> int:
    """FUZZ_EXAMPLES, else in CI 10,000 on PostgreSQL (production's database) and 2,000 on SQLite
    (which writes at half the speed: both in full would take most of the suite's time); 300 on a
    developer's machine."""
    if os.environ.get("FUZZ_EXAMPLES"):
        return int(os.environ["FUZZ_EXAMPLES"])
    if not os.environ.get("CI"):
        return 300
    return 2_000 if is_sqlite() else 10_000


SAMPLES = [(provider, *load_sample(provider, name)) for provider, name in sample_names()]

# Header names that carry a signature or token, per host (what a correct signature goes into).
SIGNATURE_HEADERS = {
    "github": "X-Hub-Signature-256",
    "gitea": "X-Gitea-Signature",
    "forgejo": "X-Forgejo-Signature",
    "gogs": "X-Gogs-Signature",
    "bitbucket": "X-Hub-Signature",
    "gitlab": "X-Gitlab-Token",
}
EVENT_HEADERS = {
    "github": ("X-GitHub-Event", "push"),
    "gitea": ("X-Gitea-Event", "push"),
    "forgejo": ("X-Forgejo-Event", "push"),
    "gogs": ("X-Gogs-Event", "push"),
    "bitbucket": ("X-Event-Key", "repo:push"),
    "gitlab": ("X-Gitlab-Event", "Push Hook"),
}
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=utf-16",
    "application/x-www-form-urlencoded",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/json;;;",
    "",
    "ApPlIcAtIoN/JSON",
]
HEADER_NAME = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-", min_size=1,
                      max_size=40).filter(lambda n: n.lower() not in {"content-length", "host",
                      "connection", "transfer-encoding", "expect", "content-type"})  # fmt: skip
HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
JSON_TEXT = st.text(max_size=200)  # any Unicode, lone surrogates and NUL included


def signed(body: bytes, header: str, secret: str = SECRET) -> str:
    if header == "X-Gitlab-Token":
        return secret
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}" if header.startswith("X-Hub") else digest


def _set_path(payload, path: list[str], value):
    node = payload
    for key in path[:-1]:
        if not isinstance(node, dict):
            return
        node = node.setdefault(key, {})
    if isinstance(node, dict):
        node[path[-1]] = value


@st.composite
def bodies(draw, original: bytes) -> tuple[bytes, str | None]:
    """(body, content type to use instead of the sample's, or None)."""
    kind = draw(st.sampled_from(
        ["same", "fields", "fields", "truncated", "bytes", "random", "utf16", "form", "huge",
         "empty", "json-scalar", "deep"]
    ))  # fmt: skip
    if kind == "same":
        return original, None
    if kind == "truncated":
        return original[: draw(st.integers(0, max(len(original) - 1, 0)))], None
    if kind == "bytes":
        position = draw(st.integers(0, len(original)))
        return original[:position] + draw(st.binary(max_size=64)) + original[position:], None
    if kind == "random":
        return draw(st.binary(max_size=2048)), None
    if kind == "huge":
        return b"{" + b" " * draw(st.integers(MAX_BODY - 10, MAX_BODY + 4096)) + b"}", None
    if kind == "empty":
        return b"", None
    if kind == "json-scalar":
        return json.dumps(draw(st.one_of(st.integers(), JSON_TEXT, st.lists(st.integers())))
                          ).encode(), "application/json"  # fmt: skip
    if kind == "deep":
        depth = draw(st.integers(100, 5000))
        return b"[" * depth + b"]" * depth, "application/json"
    try:
        payload = json.loads(original)
    except ValueError:
        form = urllib.parse.parse_qs(original.decode("utf-8", "replace")).get("payload")
        payload = json.loads(form[0]) if form else {}
    if not isinstance(payload, dict):
        payload = {}
    for _ in range(draw(st.integers(0, 4))):
        path = draw(st.sampled_from([
            ["ref"], ["after"], ["before"], ["deleted"], ["created"], ["repository"],
            ["repository", "default_branch"], ["pusher", "name"], ["push", "changes"],
            ["object_kind"], ["checkout_sha"], ["commits"], ["refChanges"], ["zen"],
        ]))  # fmt: skip
        value = draw(st.one_of(
            st.just(f"refs/heads/{BRANCH}"), st.just("refs/tags/v1"), JSON_TEXT,
            st.text("0123456789abcdef", min_size=40, max_size=40), st.integers(),
            st.booleans(), st.none(), st.lists(JSON_TEXT, max_size=3),
            st.dictionaries(JSON_TEXT, JSON_TEXT, max_size=3),
        ))  # fmt: skip
        _set_path(payload, path, value)
    text = json.dumps(payload, ensure_ascii=draw(st.booleans()))
    if kind == "utf16":
        return text.encode("utf-16"), draw(st.sampled_from(
            ["application/json", "application/json; charset=utf-16"]))  # fmt: skip
    if kind == "form":
        return urllib.parse.urlencode({"payload": text}).encode(), (
            "application/x-www-form-urlencoded"
        )
    return text.encode("utf-8", "surrogatepass"), None


@st.composite
def requests(draw):
    provider_dir, headers, original, _source_secret = draw(st.sampled_from(SAMPLES))
    headers = dict(headers)
    body, content_type = draw(bodies(original))
    if content_type is None and draw(st.integers(0, 9)) == 0:
        content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        if content_type:
            headers["Content-Type"] = content_type
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "host")}

    # The host's headers: kept, or another host's event header added (two hosts at once).
    if draw(st.integers(0, 7)) == 0:
        name, value = EVENT_HEADERS[draw(st.sampled_from(sorted(EVENT_HEADERS)))]
        headers[name] = draw(st.one_of(st.just(value), HEADER_VALUE))
    # The signature: the repository's, the source's (another secret), wrong, or none.
    valid_signatures = []
    how = draw(st.sampled_from(["ours", "ours", "ours", "source", "wrong", "none", "other"]))
    if how in ("ours", "other", "wrong", "none"):
        headers = {k: v for k, v in headers.items() if k.lower() not in
                   {h.lower() for h in SIGNATURE_HEADERS.values()}}  # fmt: skip
    if how in ("ours", "other"):
        where = provider_dir.replace("bitbucket-server", "bitbucket").replace("vectors", "github")
        header = SIGNATURE_HEADERS[
            where
            if how == "ours" and where in SIGNATURE_HEADERS
            else draw(st.sampled_from(sorted(SIGNATURE_HEADERS)))
        ]
        headers[header] = signed(body, header)
        valid_signatures.append(header)
    elif how == "wrong":
        header = draw(st.sampled_from(sorted(SIGNATURE_HEADERS.values())))
        headers[header] = draw(st.one_of(HEADER_VALUE, st.just(signed(body + b" ", header))))
        if headers[header] == signed(body, header):
            # GitLab's token does not depend on the body: "signed over another body" is still
            # the right token, and the delivery is rightly accepted.
            valid_signatures.append(header)
    # Header noise: foreign headers, re-cased names, a duplicated one.
    extra = draw(st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=4))
    items = list(headers.items())
    if draw(st.booleans()):
        items = [(k.lower() if draw(st.booleans()) else k.upper(), v) for k, v in items]
    others = [item for item in items if item[0].lower() != "content-type"]
    if others and draw(st.integers(0, 5)) == 0:
        items.append(draw(st.sampled_from(others)))
    items += extra
    draw(st.randoms(use_true_random=False)).shuffle(items)
    path = draw(st.sampled_from(["/hooks/fuzz/"] * 12 + ["/hooks/fuzz", "/hooks/nope/"]))
    chunked = draw(st.integers(0, 5)) == 0
    chunks = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5))) if chunked else []
    return {"path": path, "items": items, "body": body, "chunked": chunked, "chunks": chunks,
            "valid": valid_signatures}  # fmt: skip


def encode(request) -> bytes:
    head = f"POST {request['path']} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    body = request["body"]
    if request["chunked"]:
        head += "Transfer-Encoding: chunked\r\n"
        cuts = [0, *request["chunks"], len(body)]
        payload = (
            b"".join(
                f"{end - start:x}\r\n".encode() + body[start:end] + b"\r\n"
                for start, end in zip(cuts, cuts[1:], strict=False)
                if end > start
            )
            + b"0\r\n\r\n"
        )
    else:
        head += f"Content-Length: {len(body)}\r\n"
        payload = body
    head += "".join(f"{name}: {value}\r\n" for name, value in request["items"])
    return head.encode("latin-1") + b"\r\n" + payload


def test_no_request_breaks_the_webhook(make_repository, subprocess_env, tmp_path, figures):
    repository = make_repository(slug="fuzz", branch=BRANCH, webhook_secret=SECRET)
    env = {**subprocess_env, "MAX_WEBHOOK_BYTES": str(MAX_BODY),
           "REJECTED_DELIVERIES_PER_MINUTE": "100000", "LOG_LEVEL": "WARNING"}  # fmt: skip
    fuzz_seed = seed("webhook fuzz")
    count = examples()
    tally = {"requests": 0, "by_status": {}, "queued": 0, "flooded": 0, "refused_by_gunicorn": 0}
    started = time.monotonic()

    with gunicorn(env, tmp_path / "gunicorn.log") as server:
        last = {"delivery": 0}

        @hypothesis_seed(fuzz_seed)
        @settings(
            max_examples=count,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
        @given(requests())
        def check(request):
            answer = http_request(server.port, encode(request))
            tally["requests"] += 1
            tally["by_status"][answer.status] = tally["by_status"].get(answer.status, 0) + 1
            assert answer.status < 500, (answer.status, answer.body[:500], server.output()[-3000:])
            new = list(
                Delivery.objects.filter(pk__gt=last["delivery"])
                .order_by("pk")
                .values_list("pk", "status_code", "verdict", "signature", "sync_run_id", "reason")
            )
            if new:
                last["delivery"] = new[-1][0]
            if answer.headers.get("content-type") != "application/json":
                # gunicorn's own refusal of a request HTTP does not allow: Django never saw it.
                assert answer.status == 400 and b"Bad Request" in answer.body, answer.body[:500]
                assert new == []
                tally["refused_by_gunicorn"] += 1
                return
            reaches = request["path"] in ("/hooks/fuzz/", "/hooks/fuzz")
            if answer.status == 429:
                tally["flooded"] += 1
                assert new == [] and RejectionWindow.objects.filter(repository=repository).exists()
                return
            assert len(new) == (1 if reaches else 0), (answer.status, answer.body[:300])
            if not new:
                return
            pk, status_code, verdict, signature, sync_run_id, reason = new[0]
            assert status_code == answer.status
            assert json.loads(answer.body)["delivery"] == pk
            if sync_run_id is not None or verdict in ("queued", "joined"):
                tally["queued"] += 1
                assert request["valid"], (verdict, signature, reason)
                assert signature == Delivery.Signature.VALID

        check()

    queued_runs = SyncRun.objects.filter(repository=repository).count()
    elapsed = time.monotonic() - started
    figures(
        f"webhook fuzz: {tally['requests']} requests in {elapsed:.0f}s "
        f"({tally['requests'] / elapsed:.0f}/s), "
        f"statuses {dict(sorted(tally['by_status'].items()))}, "
        f"{tally['queued']} queued or joined a sync ({queued_runs} run(s)), "
        f"{tally['flooded']} answered 429, {tally['refused_by_gunicorn']} refused by gunicorn "
        f"before Django, seed {fuzz_seed}"
    )
    assert tally["requests"] >= count * 0.9  # hypothesis may stop early on a small space
