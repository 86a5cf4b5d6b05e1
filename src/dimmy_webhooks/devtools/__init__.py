"""Development tools: a fake Dimmy API, a Svix-like sender, the offline demo.

They power ``dimmy-webhooks demo``, ``fake-api`` and ``send``, the tests and the benchmarks;
integrators developing against the service use them too. The service itself never imports them.
"""
