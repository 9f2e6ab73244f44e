"""YAML read as DVC writes it: YAML 1.2 (ruamel.yaml, which DVC itself uses), where `1e-05` is a float.

PyYAML follows YAML 1.1, in which a float needs a dot: the `1e-05` that `dvc exp run -S train.min_lr=1e-5` writes
into params.yaml would read as the string '1e-05', and every value below 1e-4 given with `-S` would be refused.
Every reader of params.yaml, dvc.lock and a `--only`/`-S` value goes through load_yaml, so all agree with DVC.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

__all__ = ["YAMLError", "load_yaml"]


def load_yaml(text: str) -> Any:
    """Plain Python values (dicts, lists, str, int, float, bool, None) of a YAML 1.2 document."""
    return YAML(typ="safe", pure=True).load(text)
