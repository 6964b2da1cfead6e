"""Real Debian servers as test fixtures (see /work/shared/TEST-SERVERS.md).

One module per server, each with a ``run_<server>(...)`` context manager yielding a frozen
dataclass; :mod:`tests.servers.fixtures` wraps them as pytest fixtures.
"""
