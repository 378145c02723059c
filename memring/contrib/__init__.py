"""Framework integrations.

* :mod:`memring.contrib.django` — ``MemringCache``, a Django cache backend
  (and so a session store, with ``django.contrib.sessions.backends.cache``).
* :mod:`memring.contrib.flask` — Flask-Session's memcached backend takes a
  client object, and :class:`memring.Client` (or
  :class:`memring.BackupClient`) works as it is; ``FlaskSessionClient``
  wraps it so that a malformed session cookie reads as no session instead
  of failing the request::

      app.config.update(SESSION_TYPE="memcached",
                        SESSION_MEMCACHED=FlaskSessionClient(memring.BackupClient(servers)))
      flask_session.Session(app)

Each integration imports its framework only when it is imported itself.
"""
