"""Search spaces: the loss ablation rows (seed paper 001, Tables 1-2) and the Optuna space."""
from __future__ import annotations

from typing import Any

# Paper defaults (SPEC 4): l2 = l3 = 0.2; l1 = 0.05 on DF-GAN-like backbones (SSA-GAN).
DEFAULT_WEIGHTS = {"l1": 0.05, "l2": 0.2, "l3": 0.2}

# Row label -> which terms are on. Every row keeps L_G (hinge + mismatch + MA-GP).
LOSS_ROWS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "+DAMSM": ("l1",),
    "+F2R": ("l2",),
    "+F2F": ("l3",),
    "+F2R+F2F": ("l2", "l3"),
    "all": ("l1", "l2", "l3"),
}
WEIGHT_KEYS = {"l1": "loss.damsm", "l2": "loss.f2r", "l3": "loss.f2f"}


def loss_row_overrides(row: str, weights: dict[str, float] | None = None) -> dict[str, Any]:
    """Config overrides for one ablation row: the row's terms at `weights`, all others at 0."""
    if row not in LOSS_ROWS:
        raise ValueError(f"unknown ablation row {row!r}; rows: {', '.join(LOSS_ROWS)}")
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    return {key: (w[name] if name in LOSS_ROWS[row] else 0.0) for name, key in WEIGHT_KEYS.items()}


def optuna_space(max_weight: dict[str, float] | None = None) -> dict[str, Any]:
    """Tune search space over the continuous weights (TPE). Upper bounds default to 5x the paper's."""
    from ray import tune

    hi = {name: 5 * v for name, v in DEFAULT_WEIGHTS.items()} | (max_weight or {})
    return {WEIGHT_KEYS[name]: tune.uniform(0.0, hi[name]) for name in WEIGHT_KEYS}
