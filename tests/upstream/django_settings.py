"""Settings of the ``django`` job: Django's example test settings plus one cache.

``runtests.py --settings=tests.upstream.django_settings`` loads this module
in place of its default ``test_sqlite``, which is what Django's testing
guide says to do to run the memcached tests: copy the example settings and
add a ``CACHES`` entry pointing at a server.

The entry names Django's own ``PyMemcacheCache``: ``cache/tests.py`` picks
the parameters of ``PyMemcacheCacheTests`` by that backend name (and skips
the class when no cache of that name is configured). The runner
(:mod:`tests.upstream.django_runner`) makes that name resolve to
:class:`memring.contrib.django.MemringCache`, unless the job is the control
run of Django's own backend. ``LOCATION`` is every server of the job's
cluster (``$MEMRING_UPSTREAM_SERVERS``, started on loopback by the job).
"""

import os

# Django's example test settings (runtests.py's default), on runtests.py's path.
from test_sqlite import *  # type: ignore[import-not-found]  # noqa: F403

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
        "LOCATION": os.environ["MEMRING_UPSTREAM_SERVERS"].split(","),
    },
}

TEST_RUNNER = "tests.upstream.django_runner.RecordingRunner"
