"""Helpers the tests share (pre-commit's layout): imported by tests, not shipped in the gitar wheel.

hermetic.py: the hermetic git environment; trainers.py: the fake trainer; workspace.py: the
workspace builder. Conftests only wrap these in fixtures; no test folder imports another's conftest.
"""
