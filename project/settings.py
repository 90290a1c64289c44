"""Settings for gitdeploy, read from the environment (12-factor).

Every variable is listed with its default in README.md. The seed app's names (GIT_URL, REPO_DIR,
API_ENDPOINT, VERSION, TITLE, DESCRIPTION, CONTACT_*) keep their meaning and defaults.
"""

import os
import sys
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from gitdeploy import logs, multiproc
from project.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)

# Management commands that read code and schema but sign nothing run without a key, so that
# `manage.py makemigrations --check` or `collectstatic` work in a fresh clone or an image build.
# Their stand-in key is marked insecure, which `check --deploy` reports.
KEYLESS_COMMANDS = {
    "makemigrations",
    "migrate",
    "showmigrations",
    "sqlmigrate",
    "collectstatic",
    "check",
}
_command = sys.argv[1] if len(sys.argv) > 1 and Path(sys.argv[0]).name == "manage.py" else ""

DATA_DIR = Path(os.environ.get("DATA_DIR") or BASE_DIR / "data")

# `make run` generates DATA_DIR/secret_key; every other manage.py command typed in the same set-up
# (sync, createsuperuser, ...) must sign with that same key, without exporting anything first.
# SECRET_KEY or SECRET_KEY_FILE, when given, win.
_GENERATED_KEY_FILE = DATA_DIR / "secret_key"
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY and not os.environ.get("SECRET_KEY_FILE") and _GENERATED_KEY_FILE.is_file():
    SECRET_KEY = _GENERATED_KEY_FILE.read_text().strip()
if not SECRET_KEY:
    if not DEBUG and _command not in KEYLESS_COMMANDS:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is false, or "
            f"{_GENERATED_KEY_FILE} must exist. `make run` creates that file for you."
        )
    # Only reachable with DEBUG=true or for a command in KEYLESS_COMMANDS.
    SECRET_KEY = "django-insecure-no-secret-key-set"  # noqa: S105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "*")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# HTTPS=true when a TLS proxy (the compose stack's caddy profile) sits in front: cookies become
# Secure, HSTS is sent and plain HTTP is redirected, except for the health probes, which the
# container runtime sends over plain HTTP from inside.
HTTPS = env_bool("HTTPS", False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^api/health$", r"^api/ready$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    # gitdeploy usually runs on one host name of a domain that also serves other sites: HSTS for
    # every subdomain, or the browsers' preload list, is the domain owner's decision, so these two
    # are opt-in and their deploy-check warnings are not raised unless asked for.
    SILENCED_SYSTEM_CHECKS = [
        check
        for check, enabled in (
            ("security.W005", SECURE_HSTS_INCLUDE_SUBDOMAINS),
            ("security.W021", SECURE_HSTS_PRELOAD),
        )
        if not enabled
    ]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    # gitdeploy comes first so that its `db_worker` command (django-tasks-db's worker plus our
    # heartbeat and lost-run recovery) is the one `manage.py db_worker` runs.
    "gitdeploy.apps.GitdeployConfig",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_tasks",
    "django_tasks_db",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "gitdeploy.context_processors.site",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"

# Messages stay on the server: a generated webhook secret is shown once in a message, and the
# default cookie storage would send it to the browser in a signed (not encrypted) cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# --- Database -------------------------------------------------------------------------------------
# Default: an embedded SQLite file, shared by the web server and the worker. WAL lets readers work
# while the worker writes; IMMEDIATE transactions plus a busy timeout make writers wait for each
# other instead of failing with "database is locked".
SQLITE_PATH = DATA_DIR / "gitdeploy.sqlite3"
DATABASE_URL = os.environ.get("DATABASE_URL", "").strip() or f"sqlite:///{SQLITE_PATH}"
DATABASES = {"default": environ.Env.db_url_config(DATABASE_URL)}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded database needs its directory; creating it is what makes `make run` one step.
    Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    _db.setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests that start a worker subprocess need a database file both processes can open; one per
    # test process, so two test runs on one machine never share it.
    _db.setdefault("TEST", {})["NAME"] = str(
        Path(_db["NAME"]).with_name(f"test_gitdeploy_{os.getpid()}.sqlite3")
    )
elif _db["ENGINE"] == "django.db.backends.postgresql":
    _db.setdefault("CONN_MAX_AGE", env_int("CONN_MAX_AGE", 60))
    # No health-check query per request: a connection the database dropped fails its first
    # query, which the webhook view (a read) and the worker's loop retry on a new connection.
    _db["CONN_HEALTH_CHECKS"] = False
    _db.setdefault("OPTIONS", {}).setdefault("connect_timeout", env_int("DB_CONNECT_TIMEOUT", 5))
    _db["OPTIONS"].setdefault("application_name", os.environ.get("GITDEPLOY_PROCESS", "gitdeploy"))
    # gitdeploy.prebuilt prepares the webhook's and the worker's fixed statements. psycopg prepares
    # a statement when asked, or after this many runs of it; Django's default, None, never. Out of
    # reach here, so only what prebuilt asks for is prepared. DB_PREPARED_STATEMENTS=false: nothing
    # (a pooler that does not keep them; prebuilt also notices one and stops).
    if env_bool("DB_PREPARED_STATEMENTS", True):
        _db["OPTIONS"].setdefault("prepare_threshold", 2**31 - 1)
    _db.setdefault("TEST", {})["NAME"] = os.environ.get(
        "TEST_DATABASE_NAME", f"test_gitdeploy_{os.getpid()}"
    )

# Threads per web process that run requests' views, each with its own database connection
# (project.asgi's lanes): with two, one request's database round trips overlap another's Python.
# One on SQLite, which takes one writer at a time.
WEB_THREADS = env_int(
    "WEB_THREADS", 1 if _db["ENGINE"] == "django.db.backends.sqlite3" else 2, minimum=1
)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or BASE_DIR / "staticfiles")
# Hashed, compressed files (long cache headers) once `collectstatic` has written its manifest, as
# the image does at build time; `collectstatic` itself must use that storage to write the manifest.
# Without it (make run, tests) plain names are served straight from the apps' static dirs.
_MANIFEST_STORAGE = not DEBUG and (
    STATIC_ROOT.joinpath("staticfiles.json").exists() or _command == "collectstatic"
)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if _MANIFEST_STORAGE
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Without collectstatic (make run, tests), whitenoise serves straight from the apps' static dirs;
# it still wants its root to exist.
try:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:
    pass
WHITENOISE_USE_FINDERS = not STATIC_ROOT.joinpath("staticfiles.json").exists()

# --- The queue ------------------------------------------------------------------------------------
GITDEPLOY_QUEUE = "gitdeploy"
TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": [GITDEPLOY_QUEUE],
    }
}

# --- The seed app's variables ---------------------------------------------------------------------
GIT_URL = env_str("GIT_URL")
REPO_DIR = os.environ.get("REPO_DIR", "")
API_ENDPOINT = os.environ.get("API_ENDPOINT", "/api/webhook")
if not API_ENDPOINT.startswith("/"):
    raise ImproperlyConfigured(f"API_ENDPOINT={API_ENDPOINT!r} must start with /")
VERSION = os.environ.get("VERSION", "0.0.1")
TITLE = os.environ.get("TITLE", "Update from Git")
DESCRIPTION = os.environ.get(
    "DESCRIPTION", "Keeps a directory on this server at the tip of a Git branch."
)
CONTACT_NAME = os.environ.get("CONTACT_NAME", "")
CONTACT_URL = os.environ.get("CONTACT_URL", "")
CONTACT_EMAIL = os.environ.get("CONTACT_EMAIL", "")

# --- The repository configured by the environment, and sync behaviour ----------------------------
GIT_BRANCH = os.environ.get("GIT_BRANCH", "")
WEBHOOK_SECRET = env_str("WEBHOOK_SECRET")
ALLOW_UNSIGNED_WEBHOOKS = env_bool("ALLOW_UNSIGNED_WEBHOOKS", False)
POST_DEPLOY_COMMAND = os.environ.get("POST_DEPLOY_COMMAND", "")
POST_DEPLOY_TIMEOUT = env_float("POST_DEPLOY_TIMEOUT", 600.0, minimum=1)
DEPLOY_MODE = os.environ.get("DEPLOY_MODE", "inplace")
if DEPLOY_MODE not in {"inplace", "atomic"}:
    raise ImproperlyConfigured(f"DEPLOY_MODE={DEPLOY_MODE!r}: use inplace or atomic")
KEEP_RELEASES = env_int("KEEP_RELEASES", 5, minimum=1)
GIT_DEPTH = env_int("GIT_DEPTH", 0)
GIT_FILTER = os.environ.get("GIT_FILTER", "")
CLEAN_UNTRACKED = env_bool("CLEAN_UNTRACKED", False)
GIT_TIMEOUT = env_float("GIT_TIMEOUT", 600.0, minimum=1)
# How much lower than the worker's git's and the post-deploy command's CPU priority is (nice): on
# a busy machine the web answers webhooks first, which Git hosts time out after 10 s. 0: the same.
SYNC_NICENESS = env_int("SYNC_NICENESS", 10, minimum=0)
SYNC_RETRIES = env_int("SYNC_RETRIES", 3)
SYNC_RETRY_BACKOFF = env_float("SYNC_RETRY_BACKOFF", 5.0)
# Only processes that run git need the token. docker/secrets/ is mounted into the worker alone
# (the web server faces the internet and holds no git credentials), yet .env gives GIT_TOKEN_FILE
# to every service: in the web process (GITDEPLOY_PROCESS=web) an unreadable token file therefore
# means "no token here", not a failed start. Everywhere else (worker, `manage.py sync`, make run)
# it stops start-up as before.
try:
    GIT_TOKEN = env_str("GIT_TOKEN")
except ImproperlyConfigured:
    if os.environ.get("GITDEPLOY_PROCESS") != "web":
        raise
    GIT_TOKEN = ""
GIT_SSH_KEY_FILE = os.environ.get("GIT_SSH_KEY_FILE", "")
GIT_SSH_KNOWN_HOSTS_FILE = os.environ.get("GIT_SSH_KNOWN_HOSTS_FILE", "")
MAX_WEBHOOK_BYTES = env_int("MAX_WEBHOOK_BYTES", 26214400, minimum=1)
# Rejected deliveries recorded one by one per source address and minute; past this, counted in
# one RejectionWindow row per source and minute and answered 429.
REJECTED_DELIVERIES_PER_MINUTE = env_int("REJECTED_DELIVERIES_PER_MINUTE", 30, minimum=1)
# Django refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE when form fields are read (GitHub's
# form-encoded deliveries); our own cap is the one that decides.
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_WEBHOOK_BYTES + 1024

# The worker renews its lease on a running SyncRun every LEASE_SECONDS / 3; a run whose lease has
# expired belongs to a worker that died and is recovered by any other worker.
SYNC_LEASE_SECONDS = env_float("SYNC_LEASE_SECONDS", 30.0, minimum=1)
LOCK_DIR = Path(os.environ.get("LOCK_DIR") or DATA_DIR / "locks")
# Housekeeping done by the worker: finished rows of the task queue (SyncRun keeps the history) and,
# when set, deliveries older than this many days (0: keep every delivery).
TASK_RESULT_RETENTION_DAYS = env_int("TASK_RESULT_RETENTION_DAYS", 7, minimum=1)
DELIVERY_RETENTION_DAYS = env_int("DELIVERY_RETENTION_DAYS", 0)
# Finished sync runs older than this many days are deleted (gitdeploy.retention), keeping each
# repository's last success and every run whose commit is still on disk; 0: keep them all.
RETENTION_DAYS = env_int("RETENTION_DAYS", 0)
# How long /api/ready accepts since the last worker heartbeat.
WORKER_HEARTBEAT_MAX_AGE = env_float("WORKER_HEARTBEAT_MAX_AGE", 60.0, minimum=1)
# On PostgreSQL the worker is woken by NOTIFY and looks for work without one only this often (a
# notification lost while its connection was up). Behind PgBouncer in transaction mode, which does
# not pass notifications on, set it to 1 or 2: that poll is then the only wake-up.
WORKER_POLL_SECONDS = env_float("WORKER_POLL_SECONDS", 30.0, minimum=0.05)

# --- Operations: notifications, metrics, deploy status on the Git host, retention ---------------
# The admin's address as the outside world reaches it, for links in notifications and on the Git
# host (e.g. https://deploy.example.com). Unset: links are paths.
PUBLIC_URL = os.environ.get("PUBLIC_URL", "")
# After a failed run, and the first success after one (gitdeploy.notify). NOTIFY_WEBHOOK_URL and
# EMAIL_HOST_PASSWORD (or their _FILE) are read by the worker when it sends, never here: the web
# process does not need them.
NOTIFY_EMAILS = env_list("NOTIFY_EMAILS")
NOTIFY_TIMEOUT = env_float("NOTIFY_TIMEOUT", 10.0, minimum=1)
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "gitdeploy@localhost")
# The deploy status on the Git host (gitdeploy.hoststatus): its tokens (STATUS_TOKEN[_<SLUG>]) and
# per-repository overrides are read by the worker when it reports, never here.
STATUS_ENVIRONMENT = os.environ.get("STATUS_ENVIRONMENT", "production")

# GET /metrics (gitdeploy.metrics): each process's values live in its own directory under
# METRICS_DIR (gitdeploy.multiproc); a db_worker claims its directory here, before anything imports
# prometheus-client (gunicorn's master does it for the web in gitdeploy.gunicorn_conf).
METRICS_DIR = multiproc.metrics_root(base_dir=BASE_DIR)
METRICS_TOKEN = env_str("METRICS_TOKEN")
if _command == "db_worker":
    try:
        multiproc.use(multiproc.claim_worker_dir(METRICS_DIR))
    except OSError as exc:
        print(f"METRICS_DIR={METRICS_DIR}: {exc}; metrics not exported", file=sys.stderr)

# LOG_FORMAT=json: one JSON object per line (gitdeploy.logs), for web, worker and access logs.
try:
    LOG_FORMAT = logs.log_format({"LOG_FORMAT": os.environ.get("LOG_FORMAT", "")})
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
LOGGING = logs.logging_config(LOG_FORMAT, os.environ.get("LOG_LEVEL", "INFO"))
