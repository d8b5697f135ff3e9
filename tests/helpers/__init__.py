"""Plain helpers for the tests, which tests import: classes and functions, no fixtures
(those live in tests/plugins/). Site files are built by site.py only."""
