"""Search spaces: the loss ablation rows (seed paper 001, Tables 1-2), the text-embedding rows
(DTE-GAN, seed paper 000) and the Optuna space."""
from __future__ import annotations

from typing import Any

# Paper defaults (SPEC 4): l2 = l3 = 0.2, l4 = 1; l1 = 0.05 on DF-GAN-like backbones (SSA-GAN).
DEFAULT_WEIGHTS = {"l1": 0.05, "l2": 0.2, "l3": 0.2, "l4": 1.0}
# l1 (the DAMSM weight) per architecture when --l1 is not given: SSA-GAN's own 0.05 (DF-GAN shares
# its backbone) and 5 for the AttnGAN-based style model, the values seed paper 001 trains with
# (AttnGAN's lambda = 5 on CUB, Xu et al., arXiv:1711.10485; README "The papers' tables").
ARCH_L1 = {"dfgan": 0.05, "ssagan": 0.05, "attngan_style": 5.0}

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


def resolved_weights(weights: dict[str, float | None] | None, arch: str) -> dict[str, float]:
    """`weights` (None or missing: the default) with l1 defaulting per architecture (ARCH_L1)."""
    given = {k: v for k, v in (weights or {}).items() if v is not None}
    return {**DEFAULT_WEIGHTS, "l1": ARCH_L1.get(arch, DEFAULT_WEIGHTS["l1"]), **given}


def terms_overrides(terms: tuple[str, ...], weights: dict[str, float | None] | None, arch: str
                    ) -> dict[str, Any]:
    """loss.* overrides: the named terms at their weights, every other term at 0."""
    w = resolved_weights(weights, arch)
    return {key: (w[name] if name in terms else 0.0) for name, key in WEIGHT_KEYS.items()}


def loss_row_overrides(row: str, weights: dict[str, float | None] | None = None, arch: str = "dfgan"
                       ) -> dict[str, Any]:
    """Config overrides for one one-factor ablation row: the row's terms at `weights`, all others
    at 0 (l1 defaults to the architecture's, ARCH_L1)."""
    if row not in LOSS_ROWS:
        raise ValueError(f"unknown ablation row {row!r}; rows: {', '.join(LOSS_ROWS)}")
    return terms_overrides(LOSS_ROWS[row], weights, arch)


# The rows of seed paper 001's Table 1 (CUB) and Table 2 (COCO) by their paper names: the
# architecture and the loss terms each trains with. SSA-GAN's own loss includes 0.05 * DAMSM (SSA-GAN,
# Liao et al., arXiv:2104.00567, its objective), so every SSAGAN row keeps l1; CL (R2F) is the F2R term,
# CL (F2F) the F2F term, R the re-captioning term. The AttnGAN-based rows keep AttnGAN's DAMSM
# (lambda = 5). "Style2AttnGAN" is `attngan_style` (StyleGAN2 blocks with AttnGAN's word attention).
# Architectures not built yet are listed with the reason, so that the table is complete and a
# request for such a row fails with a clear message.
PaperRow = tuple[str, tuple[str, ...]]
PAPER_TABLES: dict[str, dict[str, PaperRow]] = {
    "cub": {
        "AttnGAN": ("attngan", ("l1",)),
        "AttnGAN + CL": ("attngan", ("l1", "l2")),
        "Style1AttnGAN": ("style1attngan", ("l1",)),
        "Style1AttnGAN + CL (F2F)": ("style1attngan", ("l1", "l3")),
        "Style2AttnGAN + CL (R2F)": ("attngan_style", ("l1", "l2")),
        "SSAGAN": ("ssagan", ("l1",)),
        "SSAGAN + CL (F2F)": ("ssagan", ("l1", "l3")),
        "SSAGAN + CL (R2F+F2F)": ("ssagan", ("l1", "l2", "l3")),
        "SSAGAN + CL (R2F+F2F+R)": ("ssagan", ("l1", "l2", "l3", "l4")),
    },
    "coco": {
        "AttnGAN": ("attngan", ("l1",)),
        "AttnGAN + CL": ("attngan", ("l1", "l2")),
        "SSAGAN": ("ssagan", ("l1",)),
        "SSAGAN + CL (R2F)": ("ssagan", ("l1", "l2")),
        "SSAGAN + CL (R2F+F2F)": ("ssagan", ("l1", "l2", "l3")),
    },
}
UNBUILT_ARCHS = {
    "attngan": "plain AttnGAN (the three-stage 64/128/256 generator with three discriminators) is not "
               "built in this version",
    "style1attngan": "Style1AttnGAN (a text-conditional StyleGAN2 generator without AttnGAN's fusion) is "
                     "not built in this version",
}


def paper_rows(table: str, built_only: bool = True) -> list[str]:
    """The row names of a paper table, in the paper's order (only buildable ones by default)."""
    rows = PAPER_TABLES[table]
    return [r for r, (arch, _) in rows.items() if not (built_only and arch in UNBUILT_ARCHS)]


def paper_row_overrides(table: str, row: str, weights: dict[str, float | None] | None = None
                        ) -> dict[str, Any]:
    """Config overrides for one row of a paper table: model.arch and the loss weights."""
    if table not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {table!r}; tables: {', '.join(PAPER_TABLES)}")
    rows = PAPER_TABLES[table]
    if row not in rows:
        raise ValueError(f"table {table!r} has no row {row!r}; its rows: {', '.join(map(repr, rows))}")
    arch, terms = rows[row]
    if arch in UNBUILT_ARCHS:
        raise ValueError(f"row {row!r} of table {table!r}: {UNBUILT_ARCHS[arch]}; rows that run: "
                         f"{', '.join(map(repr, paper_rows(table)))}")
    return {"model.arch": arch, **terms_overrides(terms, weights, arch)}


def embedding_row_overrides(row: str) -> dict[str, Any]:
    if row not in EMBEDDING_ROWS:
        raise ValueError(f"unknown text-embedding row {row!r}; rows: {', '.join(EMBEDDING_ROWS)}")
    return dict(EMBEDDING_ROWS[row])


def optuna_space(max_weight: dict[str, float] | None = None,
                 terms: tuple[str, ...] = ("l1", "l2", "l3", "l4"), arch: str = "dfgan") -> dict[str, Any]:
    """Tune search space over the continuous weights of `terms` (TPE). Upper bounds default to 5x
    the paper's (l1: 5x the architecture's, ARCH_L1)."""
    from ray import tune

    hi = {name: 5 * v for name, v in resolved_weights(None, arch).items()} | (max_weight or {})
    return {WEIGHT_KEYS[name]: tune.uniform(0.0, hi[name]) for name in terms}
