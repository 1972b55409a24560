"""Search spaces: the loss ablation rows (seed paper 001, Tables 1-2), the text-embedding rows
(DTE-GAN, seed paper 000) and the Optuna space."""
from __future__ import annotations

from typing import Any

# Paper defaults (SPEC 4): l2 = l3 = 0.2, l4 = 1; l1 = 0.05 on DF-GAN-like backbones (SSA-GAN).
DEFAULT_WEIGHTS = {"l1": 0.05, "l2": 0.2, "l3": 0.2, "l4": 1.0}

# Row label -> which terms are on. Every row keeps L_G (hinge + mismatch + MA-GP). `all` is the
# paper's full model, SSAGAN + CL (R2F+F2F+R) of Table 1 (SSA-GAN's own loss includes DAMSM).
LOSS_ROWS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "+DAMSM": ("l1",),
    "+F2R": ("l2",),
    "+F2F": ("l3",),
    "+F2R+F2F": ("l2", "l3"),
    "all": ("l1", "l2", "l3", "l4"),
    "+recap": ("l4",),
}
# The rows a default run sweeps: the paper's table has no row with the re-captioning loss alone,
# and the default `local` grid (6 rows x 2 seeds) is sized to finish in under 20 minutes.
DEFAULT_LOSS_ROWS = ("baseline", "+DAMSM", "+F2R", "+F2F", "+F2R+F2F", "all")
WEIGHT_KEYS = {"l1": "loss.damsm", "l2": "loss.f2r", "l3": "loss.f2f", "l4": "loss.recap"}

# Text-embedding rows (README "Text-embedding modes"). `pretrained` pins text_init_from_damsm off:
# the frozen DAMSM encoder needs no init, and the config refuses that flag without a trainable one.
EMBEDDING_ROWS: dict[str, dict[str, Any]] = {
    "pretrained": {"model.text_embedding": "pretrained", "model.text_init_from_damsm": False},
    "shared": {"model.text_embedding": "shared"},
    "dual": {"model.text_embedding": "dual"},
}


def loss_row_overrides(row: str, weights: dict[str, float] | None = None) -> dict[str, Any]:
    """Config overrides for one ablation row: the row's terms at `weights`, all others at 0."""
    if row not in LOSS_ROWS:
        raise ValueError(f"unknown ablation row {row!r}; rows: {', '.join(LOSS_ROWS)}")
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    return {key: (w[name] if name in LOSS_ROWS[row] else 0.0) for name, key in WEIGHT_KEYS.items()}


def embedding_row_overrides(row: str) -> dict[str, Any]:
    if row not in EMBEDDING_ROWS:
        raise ValueError(f"unknown text-embedding row {row!r}; rows: {', '.join(EMBEDDING_ROWS)}")
    return dict(EMBEDDING_ROWS[row])


def optuna_space(max_weight: dict[str, float] | None = None,
                 terms: tuple[str, ...] = ("l1", "l2", "l3", "l4")) -> dict[str, Any]:
    """Tune search space over the continuous weights of `terms` (TPE). Upper bounds default to 5x
    the paper's."""
    from ray import tune

    hi = {name: 5 * v for name, v in DEFAULT_WEIGHTS.items()} | (max_weight or {})
    return {WEIGHT_KEYS[name]: tune.uniform(0.0, hi[name]) for name in terms}
