"""Settings for the development server that ``test_restart`` starts: the test settings
plus a tiny URLconf, and request errors logged to stderr so a 500 explains itself."""

from tests.settings import *  # noqa: F403

ROOT_URLCONF = "tests.restart_urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
DEBUG = False
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}
