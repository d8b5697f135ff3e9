"""The test suite's fixtures live in plugin modules under tests/plugins/, one per peer
or part they serve; plain helpers (classes, functions) live in tests/helpers/, and
site files are built by tests/helpers/site.py only. This file only registers the
plugins (tests/test_layout.py keeps it so).

tests.plugins.backend comes first: its autouse fixture that kills leftover fakelabs
is then set up before, and torn down after, every other fixture of a test.
"""

pytest_plugins = [
    "tests.plugins.backend",
    "tests.plugins.slurm",
    "tests.plugins.kube",
    "tests.plugins.sshd",
    "tests.plugins.contract",
    "tests.plugins.browser",
]
