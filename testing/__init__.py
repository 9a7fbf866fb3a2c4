"""Helpers the tests share (pre-commit's layout): imported by tests, not shipped in the gitar wheel.

hermetic.py: the hermetic git environment; trainers.py: the fake trainers; workspace.py: the fake
trainer's workspace; prepared.py: workspaces with the real prepare.py and train.py; model.py:
train.py's GPT, small; history.py: tests/review's history; faults.py: tests/faults' workspace;
commands.py: git and gitar as child processes; fixtures/upstream/: an upstream-shaped train.py and prepare.py.
Conftests only wrap these in fixtures; no test folder imports another folder's conftest or modules.
"""
