"""What this repository alone needs from pytest. The harness's options, fixtures and parametrisation are its
installed plugin (`harness/pytest_plugin.py`, a pytest11 entry point), which a user's repository gets too;
this repository's own tests also drive pytest itself (tests/test_plugin.py): pytester."""

pytest_plugins = ["pytester"]
