"""The ``elastin`` command line (``elastin.cli.main:main``): presentation only. Each command
makes its API calls through ``elastin.client`` and renders the answer as tables
(``render``) or JSON; ``main`` lists the modules the commands live in and the exit codes."""
