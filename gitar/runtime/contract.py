"""The rest of gitar that train.py and prepare.py use, named here once.

The research files import gitar only from gitar.runtime (tests/core/test_layers.py holds them to
it): so what a workspace's trainer and harness depend on is this folder, and a change to gitar's
internals that would break a committed train.py or prepare.py shows up here, not in the agent's
run. These few names live in lower layers because gitar itself uses them too: the error type with
its exit code, ground.json's typed reader, the durable file writes, and the JSON checkers that
train.py builds model.json's schema from.
"""

from __future__ import annotations

from gitar.config.jsonfile import Section, describe, integer, number, read_json, string
from gitar.config.schema import Ground, load_ground
from gitar.errors import GitarError
from gitar.files import remove_stale_temps, write_durable

__all__ = [
    "GitarError", "Ground", "Section", "describe", "integer", "load_ground", "number", "read_json",
    "remove_stale_temps", "string", "write_durable",
]
