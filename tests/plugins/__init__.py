"""pytest plugins: the fixtures of the test suite, by the peer or part they serve
(registered in tests/conftest.py with ``pytest_plugins``). Plain helpers, which
tests import, live in tests/helpers/; nothing imports a plugin module."""
