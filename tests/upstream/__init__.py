"""pymemcache's and Django's own test suites, run with memring standing in (see jobs.py)."""
