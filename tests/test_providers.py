"""gitdeploy.providers against real deliveries: who sent it, is it authentic, what was pushed.

Every sample comes from tests/fixtures/webhooks (see SOURCES.md there). No database is needed.
"""

import hashlib
import hmac
import json
import re
import urllib.parse

import pytest

from gitdeploy import providers
from gitdeploy.providers import BadPayload, Envelope, Event, Unauthorized
from tests.webhook_fixtures import FIXTURES, content_type, load_sample, sample_names

ZEROS = "0" * 40


def envelope_of(provider, name):
    headers, _body, _secret = load_sample(provider, name)
    return providers.read_envelope(headers)


def parse_sample(provider, name, envelope=None):
    headers, body, _secret = load_sample(provider, name)
    envelope = envelope or providers.read_envelope(headers)
    return providers.parse(envelope, body, content_type(headers))


def sign(secret, body):
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- the fixtures are the bytes their sources published -------------------------------------------

MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda entry: entry["body_file"])
def test_fixture_bodies_are_byte_exact(entry):
    body = (FIXTURES / entry["body_file"]).read_bytes()
    assert len(body) == entry["body_bytes"]
    assert hashlib.sha256(body).hexdigest() == entry["body_sha256"]
    assert (FIXTURES / entry["headers_file"]).exists()


def test_every_sample_is_in_the_manifest():
    listed = {entry["headers_file"] for entry in MANIFEST}
    assert {f"{p}/{n}.headers.json" for p, n in sample_names()} == listed


# --- signature vectors published by GitHub and octokit --------------------------------------------

GITHUB = Envelope("github", "push", "")


def test_github_documented_vector():
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert "sha256=" + sign(secret, body) == expected
    assert providers.verify(GITHUB, {"X-Hub-Signature-256": expected}, body, secret).valid

    # The copied vector is the same one.
    headers, fixture_body, fixture_secret = load_sample("vectors", "github-docs-hello-world")
    assert (headers["X-Hub-Signature-256"], fixture_body, fixture_secret) == (
        expected,
        body,
        secret,
    )


@pytest.mark.parametrize("name", [n for _p, n in sample_names("vectors")])
def test_signature_vectors_verify(name):
    # The vectors carry no event header; they are GitHub signatures over non-push bodies.
    headers, body, secret = load_sample("vectors", name)
    assert providers.verify(GITHUB, headers, body, secret).valid
    refused(providers.verify(GITHUB, headers, body, secret + "x"), match="does not match")


def test_upper_case_hex_digest_is_accepted():
    headers, body, secret = load_sample("vectors", "octokit-foo-bar")
    algorithm, digest = headers["X-Hub-Signature-256"].split("=")
    assert providers.verify(
        GITHUB, {"X-Hub-Signature-256": f"{algorithm}={digest.upper()}"}, body, secret
    ).valid


# --- every signed sample --------------------------------------------------------------------------

SIGNED = [
    ("github", "push-branch-signed"),
    ("gitea", "push-signed"),
    ("gitea", "create-signed"),
    ("gitea", "delete-signed"),
    ("gitea", "pull-request-edited-signed"),
    ("gogs", "push-signed"),
    ("bitbucket", "repo-push-branch-created-signed"),
    ("bitbucket-server", "repo-refs-changed-signed"),
    ("gitlab", "push-branch-deleted-token"),
    ("gitlab", "push-goplayground-token"),
    ("gitlab", "tag-push-goplayground-token"),
]

BAD_SIGNATURE = [
    ("github", "push-branch-bad-signature", "does not match"),
    ("bitbucket", "repo-push-bad-signature", "does not match"),
    # Bare-hex HMAC-SHA1 without an event header (adnanh/webhook's test): refused twice over.
    ("github", "push-branch-sha1-noprefix-adnanh", "cannot tell which Git host"),
]

SIGNATURE_HEADERS = {
    "x-hub-signature-256",
    "x-hub-signature",
    "x-gitea-signature",
    "x-gogs-signature",
    "x-forgejo-signature",
    "x-gitlab-token",
}


def refused(verification: providers.Verification, match: str = "") -> providers.Verification:
    """Asserts that verify() did not accept the delivery and gave a reason matching `match`."""
    assert not verification.valid
    assert verification.state in (providers.INVALID, providers.MISSING)
    assert re.search(match, verification.reason), verification.reason
    return verification


def without_signatures(headers):
    return {k: v for k, v in headers.items() if k.lower() not in SIGNATURE_HEADERS}


def test_every_sample_with_a_secret_is_covered():
    with_secret = {(p, n) for p, n in sample_names() if load_sample(p, n)[2] is not None}
    covered = set(SIGNED) | {(p, n) for p, n, _ in BAD_SIGNATURE}
    assert with_secret - {("vectors", n) for _p, n in sample_names("vectors")} == covered


@pytest.mark.parametrize(("provider", "name"), SIGNED)
def test_signed_sample_verifies_with_its_secret(provider, name):
    headers, body, secret = load_sample(provider, name)
    envelope = providers.read_envelope(headers)
    assert envelope.provider == {"gogs": "gitea", "bitbucket-server": "bitbucket"}.get(
        provider, provider
    )
    assert providers.verify(envelope, headers, body, secret).valid


@pytest.mark.parametrize(("provider", "name"), SIGNED)
def test_signed_sample_is_rejected_with_a_wrong_secret(provider, name):
    headers, body, secret = load_sample(provider, name)
    envelope = providers.read_envelope(headers)
    error = refused(providers.verify(envelope, headers, body, secret + "-wrong"))
    assert error.state == providers.INVALID
    assert secret not in error.reason


@pytest.mark.parametrize(("provider", "name"), SIGNED)
def test_signed_sample_is_rejected_without_its_signature_header(provider, name):
    headers, body, secret = load_sample(provider, name)
    headers = without_signatures(headers)
    envelope = providers.read_envelope(headers)
    refusal = refused(providers.verify(envelope, headers, body, secret), match="missing X-")
    assert refusal.state == providers.MISSING


@pytest.mark.parametrize(
    ("provider", "name"), [(p, n) for p, n in SIGNED if not p.startswith("gitlab")]
)
def test_signed_sample_is_rejected_when_the_body_changes(provider, name):
    headers, body, secret = load_sample(provider, name)
    envelope = providers.read_envelope(headers)
    refused(providers.verify(envelope, headers, body + b"\n", secret), match="does not match")


@pytest.mark.parametrize(("provider", "name", "message"), BAD_SIGNATURE)
def test_bad_signature_sample_is_rejected(provider, name, message):
    headers, body, secret = load_sample(provider, name)
    envelope = providers.read_envelope(headers)
    refused(providers.verify(envelope, headers, body, secret), match=message)


def test_legacy_sha1_signature_alone_is_refused():
    # push-branch-signed carries both headers; the SHA-1 one is valid but not enough on its own.
    headers, body, secret = load_sample("github", "push-branch-signed")
    del headers["X-Hub-Signature-256"]
    envelope = providers.read_envelope(headers)
    refusal = refused(providers.verify(envelope, headers, body, secret), match="legacy SHA-1")
    assert refusal.state == providers.INVALID  # a signature was sent, just not one we accept
    # Same for the adnanh sample once it is known to come from GitHub.
    headers, body, secret = load_sample("github", "push-branch-sha1-noprefix-adnanh")
    refused(providers.verify(GITHUB, headers, body, secret), match="legacy SHA-1")


def test_gitlab_token_must_equal_the_secret():
    headers, body, _secret = load_sample("gitlab", "push-branch-deleted-token")
    envelope = providers.read_envelope(headers)
    for token in ("void", "", "topsecret ", "TOPSECRET"):
        headers["X-Gitlab-Token"] = token
        refused(providers.verify(envelope, headers, body, "topsecret-x"))
    headers["X-Gitlab-Token"] = "void"
    refused(
        providers.verify(envelope, headers, body, "topsecret"),
        match="X-Gitlab-Token does not match",
    )


def test_gitlab_non_ascii_token_arriving_latin1_decoded_matches():
    # WSGI hands header bytes over as latin-1 text.
    secret = "sécret-✓"
    as_wsgi = secret.encode("utf-8").decode("latin-1")
    envelope = Envelope("gitlab", "Push Hook", "")
    assert providers.verify(envelope, {"X-Gitlab-Token": as_wsgi}, b"{}", secret).valid
    assert providers.verify(envelope, {"X-Gitlab-Token": secret}, b"{}", secret).valid


def test_gitea_signature_headers_and_prefix_rules():
    headers, body, secret = load_sample("gitea", "push-signed")
    digest = headers.pop("X-Gitea-Signature")
    envelope = providers.read_envelope(headers)
    for header in ("X-Forgejo-Signature", "X-Gogs-Signature"):
        assert providers.verify(envelope, {header: digest}, body, secret).valid
    assert providers.verify(
        envelope, {"X-Hub-Signature-256": f"sha256={digest}"}, body, secret
    ).valid
    refused(
        providers.verify(envelope, {"X-Hub-Signature-256": digest}, body, secret),
        match="sha256=<hex digest>",
    )


def test_bitbucket_requires_the_sha256_prefix():
    headers, body, secret = load_sample("bitbucket", "repo-push-branch-created-signed")
    envelope = providers.read_envelope(headers)
    digest = headers["X-Hub-Signature"].removeprefix("sha256=")
    for value in (digest, f"sha1={digest}"):
        refused(
            providers.verify(envelope, {"X-Hub-Signature": value}, body, secret),
            match="sha256=<hex digest>",
        )


def test_non_ascii_signature_header_is_rejected_not_crashing():
    headers, body, secret = load_sample("github", "push-branch-signed")
    headers["X-Hub-Signature-256"] = "sha256=é" * 3
    refused(
        providers.verify(providers.read_envelope(headers), headers, body, secret),
        match="does not match",
    )


def test_unknown_provider_and_empty_secret_are_rejected():
    headers, body, secret = load_sample("github", "push-branch-signed")
    unknown = refused(
        providers.verify(Envelope("", "", ""), headers, body, secret),
        match="cannot tell which Git host",
    )
    assert unknown.state == providers.MISSING
    refused(
        providers.verify(providers.read_envelope(headers), headers, body, ""),
        match="no webhook secret",
    )


# --- the envelope ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "name", "expected"),
    [
        (
            "github",
            "push-branch-signed",
            ("github", "push", "ee8d97b4-1479-43f1-9cac-fbbd1b80da55"),
        ),
        ("github", "ping", ("github", "ping", "")),
        ("github", "push-branch-sha1-noprefix-adnanh", ("", "", "")),
        # Gitea also sends X-GitHub-Event / X-Gogs-Event: its own header wins.
        ("gitea", "push-docs", ("gitea", "push", "f6266f16-1bf3-46a5-9ea4-602e06ead473")),
        ("gitea", "create-signed", ("gitea", "create", "")),
        ("gogs", "push-signed", ("gitea", "push", "f6266f16-1bf3-46a5-9ea4-602e06ead473")),
        (
            "gitlab",
            "push-recorded-17.1",
            ("gitlab", "Push Hook", "9cebe914-4827-408f-b014-cfa23a47a35f"),
        ),
        ("gitlab", "tag-push-docs", ("gitlab", "Tag Push Hook", "")),
        ("bitbucket", "repo-push-branch-created-goscm", ("bitbucket", "repo:push", "")),
        ("bitbucket-server", "repo-refs-changed-signed", ("bitbucket", "repo:refs_changed", "")),
    ],
)
def test_read_envelope(provider, name, expected):
    assert envelope_of(provider, name) == Envelope(*expected)


def test_gitea_and_forgejo_win_over_github_headers_in_any_casing():
    common = {"x-github-event": "push", "x-github-delivery": "gh-id", "X-GOGS-EVENT": "push"}
    assert providers.read_envelope(
        {**common, "X-Gitea-Event": "push", "X-Gitea-Delivery": "g"}
    ) == (Envelope("gitea", "push", "g"))
    assert providers.read_envelope(
        {**common, "x-forgejo-event": "push", "x-forgejo-delivery": "f"}
    ) == Envelope("gitea", "push", "f")
    assert providers.read_envelope(common) == Envelope("gitea", "push", "")
    assert providers.read_envelope({"x-github-event": "push", "x-github-delivery": "gh-id"}) == (
        Envelope("github", "push", "gh-id")
    )


def test_delivery_id_fallbacks():
    gitlab = {"X-Gitlab-Event": "Push Hook", "Idempotency-Key": "idem"}
    assert providers.read_envelope(gitlab).delivery_id == "idem"
    bitbucket = {"X-Event-Key": "repo:push", "X-Request-UUID": "req-uuid", "X-Hook-UUID": "hook"}
    assert providers.read_envelope(bitbucket).delivery_id == "req-uuid"
    assert providers.read_envelope({}) == Envelope("", "", "")


# --- parsing every sample -------------------------------------------------------------------------

# (provider, name): (kind, ref, after, deleted); after is "" for a deletion or a non-push.
PARSED = {
    ("github", "push-branch-signed"): (
        "push",
        "refs/heads/master",
        "199eddf46df50de8d02e99bf1c5fdb4101338224",
        False,
    ),
    ("github", "push-branch-bad-signature"): (
        "push",
        "refs/heads/master",
        "199eddf46df50de8d02e99bf1c5fdb4101338224",
        False,
    ),
    ("github", "push-branch-created"): (
        "push",
        "refs/heads/feature-branch",
        "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd",
        False,
    ),
    ("github", "push-branch-deleted"): ("push", "refs/heads/feature-branch", "", True),
    ("github", "push-branch-goplayground"): (
        "push",
        "refs/heads/master",
        "fd489864e7642b48eaad6e3f155c10e46810ec72",
        False,
    ),
    ("github", "push-branch-form-2013"): (
        "push",
        "refs/heads/master",
        "4d9840f8e661e7067472e828ee6ad8dd3008b247",
        False,
    ),
    ("github", "push-new-branch-octokit"): (
        "push",
        "refs/heads/master",
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        False,
    ),
    ("github", "push-tag-created"): (
        "push",
        "refs/tags/v0.0.1",
        "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd",
        False,
    ),
    ("github", "push-tag-created-ghes"): (
        "push",
        "refs/tags/simple-tag",
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        False,
    ),
    ("github", "push-tag-deleted"): ("push", "refs/tags/v0.0.1", "", True),
    ("github", "push-tag-deleted-octokit"): ("push", "refs/tags/simple-tag", "", True),
    ("github", "push-tag-deleted-org-octokit"): ("push", "refs/tags/simple-tag", "", True),
    ("github", "ping"): ("ping", "", "", False),
    ("github", "ping-organization"): ("ping", "", "", False),
    ("github", "ping-github-app"): ("ping", "", "", False),
    ("github", "ping-legacy-goplayground"): ("ping", "", "", False),
    # No event header at all: the host is unknown, so nothing is read from the body.
    ("github", "push-branch-sha1-noprefix-adnanh"): ("other", "", "", False),
    ("gitlab", "push"): (
        "push",
        "refs/heads/master",
        "2adc9465c4edfc33834e173fe89436a7cb899a1d",
        False,
    ),
    ("gitlab", "push-branch-created"): (
        "push",
        "refs/heads/feature",
        "c4c79227ed610f1151f05bbc5be33b4f340d39c8",
        False,
    ),
    ("gitlab", "push-branch-deleted-token"): ("push", "refs/heads/feature", "", True),
    ("gitlab", "push-docs"): (
        "push",
        "refs/heads/master",
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        False,
    ),
    ("gitlab", "push-goplayground-token"): (
        "push",
        "refs/heads/master",
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        False,
    ),
    ("gitlab", "push-recorded-17.1"): (
        "push",
        "refs/heads/master",
        "f15b32277d2c55c6c595845a87109b09c913c556",
        False,
    ),
    ("gitlab", "push-xanzy"): (
        "push",
        "refs/heads/master",
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        False,
    ),
    ("gitlab", "tag-push-created"): (
        "push",
        "refs/tags/v1.0.0",
        "2adc9465c4edfc33834e173fe89436a7cb899a1d",
        False,
    ),
    ("gitlab", "tag-push-deleted"): ("push", "refs/tags/v1.0.0", "", True),
    ("gitlab", "tag-push-docs"): (
        "push",
        "refs/tags/v1.0.0",
        "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7",
        False,
    ),
    ("gitlab", "tag-push-goplayground-token"): (
        "push",
        "refs/tags/v1.0.0",
        "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7",
        False,
    ),
    ("gitlab", "tag-push-xanzy"): (
        "push",
        "refs/tags/v1.0.0",
        "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7",
        False,
    ),
    ("gitea", "push-signed"): (
        "push",
        "refs/heads/master",
        "67b56589a45103f891bdee7c0546e5d40bc02001",
        False,
    ),
    ("gitea", "push-docs"): (
        "push",
        "refs/heads/develop",
        "bffeb74224043ba2feb48d137756c8a9331c449a",
        False,
    ),
    ("gitea", "push-goscm"): (
        "push",
        "refs/heads/master",
        "4522cbcefc20728a5b72b3a86af35e608622c514",
        False,
    ),
    ("gitea", "create-signed"): ("other", "", "", False),
    ("gitea", "delete-signed"): ("other", "", "", False),
    ("gitea", "pull-request-edited-signed"): ("other", "", "", False),
    ("gogs", "push-signed"): (
        "push",
        "refs/heads/develop",
        "bffeb74224043ba2feb48d137756c8a9331c449a",
        False,
    ),
    ("bitbucket", "repo-push-branch-created-signed"): (
        "push",
        "refs/heads/feature/webhook",
        "d7f300a32270053bdfd97a6d64113f58202c33e7",
        False,
    ),
    ("bitbucket", "repo-push-bad-signature"): (
        "push",
        "refs/heads/feature/webhook",
        "d7f300a32270053bdfd97a6d64113f58202c33e7",
        False,
    ),
    ("bitbucket", "repo-push-branch-created"): (
        "push",
        "refs/heads/feature/test",
        "174561d625c9623b60d8aba09b7f08ddc9df45cd",
        False,
    ),
    ("bitbucket", "repo-push-branch-created-goscm"): (
        "push",
        "refs/heads/develop",
        "141977fedf5cf35aa290ac87d4b5177ac4cd9de1",
        False,
    ),
    ("bitbucket", "repo-push-branch-deleted"): ("push", "refs/heads/feature/test", "", True),
    ("bitbucket", "repo-push-branch-deleted-goscm"): ("push", "refs/heads/develop", "", True),
    ("bitbucket", "repo-push-branch-forced-update"): (
        "push",
        "refs/heads/feature/issue-819",
        "5ecffa3874e96920f24a2b3c0d0038e47d5cd1a4",
        False,
    ),
    ("bitbucket", "repo-push-branch-updated-goscm"): (
        "push",
        "refs/heads/master",
        "141977fedf5cf35aa290ac87d4b5177ac4cd9de1",
        False,
    ),
    ("bitbucket", "repo-push-goplayground"): (
        "push",
        "refs/heads/name-of-branch",
        "709d658dc5b6d6afcd46049c2f332ee3f515a67d",
        False,
    ),
    ("bitbucket", "repo-push-tag-created"): (
        "push",
        "refs/tags/simple-tag",
        "7ef5981d59145c3ed300b1ab77b93907d33abe59",
        False,
    ),
    ("bitbucket", "repo-push-annotated-tag-created"): (
        "push",
        "refs/tags/test-tag",
        "7ef5981d59145c3ed300b1ab77b93907d33abe59",
        False,
    ),
    ("bitbucket", "repo-push-tag-created-goscm"): (
        "push",
        "refs/tags/feature/x",
        "141977fedf5cf35aa290ac87d4b5177ac4cd9de1",
        False,
    ),
    ("bitbucket", "repo-push-tag-deleted"): ("push", "refs/tags/test", "", True),
    ("bitbucket", "repo-push-tag-deleted-goscm"): ("push", "refs/tags/feature/x", "", True),
    ("bitbucket-server", "repo-refs-changed-signed"): (
        "push",
        "refs/heads/master",
        "823b2230a56056231c9425d63758fa87078a66b4",
        False,
    ),
}


def test_every_request_sample_is_parsed_here():
    assert set(PARSED) == {(p, n) for p, n in sample_names() if p != "vectors"}


@pytest.mark.parametrize(
    ("provider", "name", "kind", "ref", "after", "deleted"),
    [(*sample, *expected) for sample, expected in PARSED.items()],
)
def test_parse_sample(provider, name, kind, ref, after, deleted):
    event = parse_sample(provider, name)
    assert (event.kind, event.ref, event.after, event.deleted) == (kind, ref, after, deleted)
    if kind != "push":
        assert event.reason
        return
    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else ""
    tag = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else ""
    assert (event.branch, event.tag) == (branch, tag)
    assert event.repository
    assert event.pusher


@pytest.mark.parametrize(
    ("provider", "name", "before"),
    [
        ("github", "push-branch-created", ZEROS),
        ("github", "push-branch-deleted", "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd"),
        ("gitlab", "push", "9217710ce8c7e1eae7a5d1c45f6e43e1c769f866"),
        ("bitbucket", "repo-push-branch-forced-update", "a10199272451f4c7c5edced2d40b5d6f2f6f5fa3"),
        ("bitbucket", "repo-push-branch-created", ""),  # `old: null`
        ("bitbucket", "repo-push-branch-deleted", "174561d625c9623b60d8aba09b7f08ddc9df45cd"),
        (
            "bitbucket-server",
            "repo-refs-changed-signed",
            "5c64a07cd6c0f21b753bf261ef059c7e7633c50a",
        ),
    ],
)
def test_parse_before(provider, name, before):
    assert parse_sample(provider, name).before == before


def test_informational_fields():
    github = parse_sample("github", "push-branch-signed")
    assert (github.repository, github.default_branch, github.pusher) == (
        "Codertocat/Hello-World",
        "master",
        "Codertocat",
    )
    gitlab = parse_sample("gitlab", "push-recorded-17.1")
    assert (gitlab.repository, gitlab.default_branch, gitlab.pusher) == (
        "flightjs/Flight",
        "master",
        "root",
    )
    gitea = parse_sample("gitea", "push-docs")
    assert (gitea.repository, gitea.default_branch, gitea.pusher) == (
        "gitea/webhooks",
        "main",
        "gitea",
    )
    bitbucket = parse_sample("bitbucket", "repo-push-branch-updated-goscm")
    assert (bitbucket.repository, bitbucket.pusher) == ("brydzewski/foo", "brydzewski")
    assert parse_sample("github", "ping").repository == "Octocoders/Hello-World"


def test_sha1_sample_parses_once_known_to_be_github():
    event = parse_sample("github", "push-branch-sha1-noprefix-adnanh", envelope=GITHUB)
    assert (event.kind, event.branch, event.after) == (
        "push",
        "master",
        "1481a2de7b2a7d02428ad93446ab166be7793fbb",
    )


# --- GitHub's form-encoded deliveries -------------------------------------------------------------


def test_form_encoded_push_signature_covers_the_raw_form_body():
    headers, body, _secret = load_sample("github", "push-branch-form-2013")
    assert body.startswith(b"payload=%7B")
    envelope = providers.read_envelope(headers)
    secret = "form-secret"
    signed = {**headers, "X-Hub-Signature-256": "sha256=" + sign(secret, body)}
    assert providers.verify(envelope, signed, body, secret).valid

    # A signature over the decoded JSON is not what GitHub sends, so it must not pass.
    decoded = urllib.parse.parse_qs(body.decode())["payload"][0].encode()
    wrong = {**headers, "X-Hub-Signature-256": "sha256=" + sign(secret, decoded)}
    refused(providers.verify(envelope, wrong, body, secret), match="does not match")

    event = providers.parse(envelope, body, "application/x-www-form-urlencoded; charset=utf-8")
    assert (event.branch, event.before) == ("master", "1acddad803a6de4e11cf310fd6430eafdad94f47")
    assert event.repository == "onetom/rebol"
    assert event.pusher == "none"  # what GitHub wrote in 2013, kept as sent


def test_form_encoded_body_without_payload_field():
    form = "application/x-www-form-urlencoded"
    with pytest.raises(BadPayload, match="no 'payload' field"):
        providers.parse(GITHUB, b"ref=refs%2Fheads%2Fmain", form)
    with pytest.raises(BadPayload, match="not valid JSON"):
        providers.parse(GITHUB, b"payload=%7Bnope", form)
    with pytest.raises(BadPayload, match="cannot be decoded"):
        providers.parse(GITHUB, b"payload=%ff%fe", form)


# --- malformed payloads ---------------------------------------------------------------------------

AFTER = "199eddf46df50de8d02e99bf1c5fdb4101338224"


@pytest.mark.parametrize(
    ("envelope", "body", "message"),
    [
        (GITHUB, b"", "body is empty"),
        (GITHUB, b"{not json", "body is not valid JSON"),
        (GITHUB, b"\xff\xfe\xfa", "body is not valid JSON"),
        (GITHUB, b"[1, 2]", "must be an object, not an array"),
        (GITHUB, b'"push"', "must be an object, not a string"),
        (GITHUB, b"[" * 100_000, "body is not valid JSON"),
        (GITHUB, json.dumps({"after": AFTER}).encode(), "GitHub push payload: no ref"),
        (GITHUB, json.dumps({"ref": 7, "after": AFTER}).encode(), "no ref"),
        (GITHUB, json.dumps({"ref": "refs/heads/main"}).encode(), "no 'after' commit"),
        (GITHUB, json.dumps({"ref": "refs/heads/main", "after": None}).encode(), "no 'after'"),
        (
            GITHUB,
            json.dumps({"ref": "refs/heads/main", "after": "HEAD~1; rm -rf /"}).encode(),
            "'after' is not a commit id",
        ),
        (Envelope("gitea", "push", ""), b'{"ref": "refs/heads/main"}', "Gitea push payload"),
        (Envelope("gitlab", "Push Hook", ""), b'{"after": "' + AFTER.encode() + b'"}', "GitLab"),
        (Envelope("bitbucket", "repo:push", ""), b'{"push": {}}', "no push.changes list"),
        (
            Envelope("bitbucket", "repo:push", ""),
            b'{"push": {"changes": [{"new": null, "old": null}]}}',
            "no change names a branch or tag",
        ),
        (
            Envelope("bitbucket", "repo:push", ""),
            b'{"push": {"changes": [{"new": {"type": "branch", "name": "main"}}]}}',
            "no 'after' commit",
        ),
    ],
)
def test_malformed_payload(envelope, body, message):
    with pytest.raises(BadPayload, match=message) as error:
        providers.parse(envelope, body, "application/json")
    assert error.value.status == 400


def test_non_push_events_still_need_a_json_object():
    with pytest.raises(BadPayload):
        providers.parse(Envelope("github", "ping", ""), b"nope", "application/json")


def test_upper_case_and_sha256_object_ids():
    sha256_id = "ab" * 32
    body = json.dumps({"ref": "refs/heads/main", "before": ZEROS, "after": sha256_id.upper()})
    event = providers.parse(GITHUB, body.encode(), "application/json")
    assert event.after == sha256_id
    deleted = json.dumps({"ref": "refs/heads/main", "before": sha256_id, "after": "0" * 64})
    assert providers.parse(GITHUB, deleted.encode(), "").deleted


# --- pings, tests and events that are not pushes --------------------------------------------------


def test_other_github_events_say_why():
    event = providers.parse(Envelope("github", "issues", ""), b"{}", "application/json")
    assert event == Event("other", reason="event 'issues' is not a push")


def test_unknown_host_is_other():
    assert providers.parse(Envelope("", "", ""), b"{}", "").kind == "other"


def test_gitea_test_delivery_with_fake_commit_is_a_ping():
    # What recent Gitea/Forgejo "Test Delivery" sends: the default branch, before == after == zeros.
    _headers, body, _secret = load_sample("gitea", "push-signed")
    payload = json.loads(body)
    payload.update(before=ZEROS, after=ZEROS)
    event = providers.parse(Envelope("gitea", "push", ""), json.dumps(payload).encode(), "")
    assert (event.kind, event.ref) == ("ping", "refs/heads/master")
    assert "test delivery" in event.reason


def test_push_with_equal_before_and_after_is_still_a_push():
    # Gogs / older Gitea test deliveries send the branch tip as both: deploying it is harmless.
    body = json.dumps({"ref": "refs/heads/main", "before": AFTER, "after": AFTER}).encode()
    event = providers.parse(Envelope("gitea", "push", ""), body, "")
    assert (event.kind, event.branch, event.after) == ("push", "main", AFTER)
    assert "test delivery" in event.reason


def test_gitlab_system_hook_push():
    _headers, body, _secret = load_sample("gitlab", "push")
    event = providers.parse(Envelope("gitlab", "System Hook", ""), body, "application/json")
    assert (event.kind, event.branch) == ("push", "master")
    other = providers.parse(
        Envelope("gitlab", "System Hook", ""), b'{"event_name": "project_create"}', ""
    )
    assert (other.kind, other.reason) == (
        "other",
        "GitLab system hook 'project_create' is not a push",
    )


def test_gitlab_annotated_tag_uses_checkout_sha():
    tag_object, commit = "1" * 40, "2" * 40
    body = json.dumps(
        {"ref": "refs/tags/v2", "before": ZEROS, "after": tag_object, "checkout_sha": commit}
    ).encode()
    event = providers.parse(Envelope("gitlab", "Tag Push Hook", ""), body, "")
    assert (event.kind, event.tag, event.after) == ("push", "v2", commit)


def test_bitbucket_ping_and_other_events():
    ping = providers.parse(Envelope("bitbucket", "diagnostics:ping", ""), b"{}", "")
    assert ping.kind == "ping"
    other = providers.parse(Envelope("bitbucket", "pullrequest:created", ""), b"{}", "")
    assert other == Event("other", reason="event 'pullrequest:created' is not a push")


def bitbucket_push(*changes):
    def side(kind, name, commit):
        return {"type": kind, "name": name, "target": {"type": "commit", "hash": commit}}

    body = {
        "push": {"changes": [{"new": side(*new) if new else None, "old": None} for new in changes]}
    }
    return json.dumps(body).encode()


def test_bitbucket_multi_ref_push_picks_the_last_branch_or_the_named_one():
    body = bitbucket_push(
        ("branch", "main", "1" * 40), ("tag", "v1", "2" * 40), ("branch", "dev", "3" * 40)
    )
    envelope = Envelope("bitbucket", "repo:push", "")
    assert providers.parse(envelope, body, "").branch == "dev"
    chosen = providers.parse(envelope, body, "", branch="main")
    assert (chosen.branch, chosen.after) == ("main", "1" * 40)
    # A branch that the push did not touch falls back to the default rule.
    assert providers.parse(envelope, body, "", branch="other").branch == "dev"
    only_tags = bitbucket_push(("tag", "v1", "2" * 40))
    assert providers.parse(envelope, only_tags, "").tag == "v1"


# --- storing headers ------------------------------------------------------------------------------


def test_sanitize_headers_removes_secrets_but_shows_they_were_sent():
    headers, _body, _secret = load_sample("gitlab", "push-branch-deleted-token")
    headers.update({"Authorization": "Basic dXNlcjpwYXNz", "cookie": "session=1"})
    clean = providers.sanitize_headers(headers)
    assert clean["X-Gitlab-Token"] == "[removed]"
    assert clean["Authorization"] == "[removed]"
    assert clean["cookie"] == "[removed]"
    assert clean["X-Gitlab-Event"] == "Push Hook"
    assert "topsecret" not in json.dumps(clean)
    assert headers["X-Gitlab-Token"] == "topsecret"  # the caller's mapping is untouched


def test_signatures_are_kept_when_sanitizing():
    headers, _body, _secret = load_sample("github", "push-branch-signed")
    assert providers.sanitize_headers(headers) == headers


def test_errors_carry_status_and_message():
    error = Unauthorized("nope")
    assert (error.status, error.message, str(error)) == (401, "nope", "nope")
    assert isinstance(error, providers.WebhookError)
    assert BadPayload("bad").status == 400
