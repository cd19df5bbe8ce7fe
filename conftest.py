"""Plugins every pytest run of this repository loads, whatever its arguments or directory.

The root conftest is the one file pytest always reads for paths in the repository, so
the plugins below apply to ``tests/`` and to the tutorials in ``notebooks/`` alike
(``notebooks/`` then holds only what a reader opens or imports).
"""

pytest_plugins = ("tests.leakcheck", "tests.tutorials.plugin")
