"""The procedural families by name: 'faces' (procedural.py) and 'butterflies'.

Each family module has the same interface: KEYPOINT_NAMES, FLIP_PERMUTATION, NUM_KEYPOINTS,
CONFIG_DEFAULTS (its pose ranges, as ProceduralConfig fields), sample_scene, render_scene,
scene_keypoints (a scene's canonical keypoints), render, generate and canonical_keypoints.
"""

from __future__ import annotations

import types

from gangealing_jax.data import procedural, procedural_butterflies

FAMILIES = {"faces": procedural, "butterflies": procedural_butterflies}


def family_module(name: str) -> types.ModuleType:
    if name not in FAMILIES:
        raise ValueError(f"unknown procedural family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_config(name: str, **fields) -> procedural.ProceduralConfig:
    """The family's ProceduralConfig: its own pose ranges, overridden by `fields`."""
    return procedural.ProceduralConfig(**{**family_module(name).CONFIG_DEFAULTS, **fields})
