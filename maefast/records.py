"""What a resumable job records about its inputs and settings, and how a resumed job compares them.

A record is a JSON-like dict (config, data fingerprint, weights hash, ...). Comparing flattens it into dotted
keys, so every key a record gains later is compared without being listed anywhere.
"""
from __future__ import annotations

import json


def as_json(value):
    """`value` as it reads back from JSON (tuples become lists), so a fresh record compares equal to a stored one."""
    return json.loads(json.dumps(value))


def flatten(record: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1e-4}} -> {"optim.lr": 1e-4}; lists and other values are leaves, an empty dict has none."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changes(recorded: dict, current: dict) -> dict[str, tuple]:
    """Every dotted key whose value differs, as key -> (recorded, current); a key only one side has gets None."""
    old, new = flatten(as_json(recorded)), flatten(as_json(current))
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)}


def describe_changes(differences: dict[str, tuple]) -> str:
    """"optim.lr: 0.0001 -> 0.001; optim.name: 'lion' -> 'adamw'" (a key one side lacks shows as (none))."""
    def shown(value):
        return "(none)" if value is None else repr(value)
    return "; ".join(f"{key}: {shown(old)} -> {shown(new)}" for key, (old, new) in differences.items())
