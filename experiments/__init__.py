"""The experiment, campaign and game-day files shipped with the harness.

Not code: this file makes the directory the package ``chaos.experiments``
(pyproject.toml ``package-dir``), so an installed harness carries the files and
the pytest plugin (``chaos.pytest_plugin``) finds them for a user's repo that
has none. Read from disk by ``chaos.spec``; campaigns name experiments by
paths relative to themselves, so the tree stays as it is.
"""

__all__: list[str] = []
