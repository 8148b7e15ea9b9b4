"""The procedural families by name: 'faces' (procedural.py) and 'butterflies'.

Each family module has the same interface: KEYPOINT_NAMES, FLIP_PERMUTATION, NUM_KEYPOINTS,
CONFIG_DEFAULTS (its pose ranges, as ProceduralConfig fields), sample_scene, render_scene,
scene_keypoints (a scene's canonical keypoints), render, generate and canonical_keypoints.
"""

from __future__ import annotations

import types

import numpy as np

from gangealing_jax.data import procedural, procedural_butterflies

FAMILIES = {"faces": procedural, "butterflies": procedural_butterflies}


def family_module(name: str) -> types.ModuleType:
    if name not in FAMILIES:
        raise ValueError(f"unknown procedural family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_config(name: str, **fields) -> procedural.ProceduralConfig:
    """The family's ProceduralConfig: its own pose ranges, overridden by `fields`."""
    return procedural.ProceduralConfig(**{**family_module(name).CONFIG_DEFAULTS, **fields})


def config_from_meta(meta: dict) -> procedural.ProceduralConfig | None:
    """The ProceduralConfig a rendered prepared dataset's meta.json records (None if another)."""
    if meta.get("source") != "procedural" or "procedural_config" not in meta:
        return None
    fields = {
        k: tuple(v) if isinstance(v, list) else v for k, v in meta["procedural_config"].items()
    }
    return procedural.ProceduralConfig(**fields)


def canonical_keypoints_of(name: str, seed: int, count: int, config: procedural.ProceduralConfig):
    """Items 0..count-1 of the family `name`, seed `seed`: each one's keypoints (count, P, 2) in
    the canonical frame with its pose undone (the bend kept: what no similarity can undo), and
    the pixels per canonical unit (count,) of its rendering."""
    module = family_module(name)
    points, scales = [], []
    for index in range(count):
        scene = module.sample_scene(procedural.sample_rng(seed, index), config)
        canonical = module.scene_keypoints(scene)
        if scene.pose.flip:  # a mirrored object's left/right keypoints swap (see procedural.py)
            canonical = (canonical * np.array([-1.0, 1.0]))[module.FLIP_PERMUTATION]
        points.append(canonical)
        scales.append(scene.pose.scale * config.resolution / 2)
    return np.stack(points), np.array(scales)
