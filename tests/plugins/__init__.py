"""pytest plugins: the fixtures of the test suite, by the peer or part they serve
(registered in tests/conftest.py with ``pytest_plugins``)."""
