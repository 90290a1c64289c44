"""Settings for the test suite: the production settings, with a throwaway SECRET_KEY when none is
set. Subprocesses that tests start (worker, web) use project.settings with an explicit env."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-never-used-in-production-0123456789")

from project.settings import *  # noqa: E402,F403
