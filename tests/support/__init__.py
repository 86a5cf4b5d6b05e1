"""What the tests share besides fixtures, one module per concern.

- :mod:`.constants`: credentials, the CLI's path, the store backends, run sizes;
- :mod:`.builders`: one builder per model (events, stored items, settings, event batches);
- :mod:`.senders`: signing, the one signed-webhook poster, the one retrying Svix-like sender;
- :mod:`.fakes`: the one fake clock, a fake warehouse system;
- :mod:`.processes`: the service as a child process, and waiting;
- :mod:`.rawhttp`: raw HTTP/1.1 on a socket, for what a client library will not send;
- :mod:`.databases`: SQLite and PostgreSQL URLs and databases, reading behind the store's back;
- :mod:`.dashboard`: the dashboard as a browser uses it;
- :mod:`.pgcluster`: a private PostgreSQL server; :mod:`.handlers`: ``python:`` outputs.

The fixtures built on these live in ``tests/conftest.py``. Everything is bounded (waits take a
timeout, the sender a deadline and an attempt cap) and all traffic goes to 127.0.0.1. Nothing
here asserts: the tests decide what is a failure.
"""
