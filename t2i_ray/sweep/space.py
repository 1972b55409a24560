"""Search spaces: the loss ablation rows (seed paper 001, Tables 1-2), the text-embedding rows
(DTE-GAN, seed paper 000), the Optuna space, and the parsers of `--sweep KEY=v1,v2` (grid axes
over any config key) and `--space KEY=KIND:LOW:HIGH` (Optuna ranges over any numeric key)."""
from __future__ import annotations

import math
from typing import Any, Collection

# Paper defaults (SPEC 4): l2 = l3 = 0.2, l4 = 1; l1 = 0.05 on DF-GAN-like backbones (SSA-GAN).
DEFAULT_WEIGHTS = {"l1": 0.05, "l2": 0.2, "l3": 0.2, "l4": 1.0}
# l1 (the DAMSM weight) per architecture when --l1 is not given: SSA-GAN's own 0.05 (DF-GAN shares
# its backbone) and 5 for the AttnGAN-based style model, the values seed paper 001 trains with
# (AttnGAN's lambda = 5 on CUB, Xu et al., arXiv:1711.10485; README "The papers' tables"). Plain
# AttnGAN's is its code's cfg.TRAIN.SMOOTH.LAMBDA for CUB (`taoxugit/AttnGAN` code/cfg/bird_attn2.yml).
ARCH_L1 = {"dfgan": 0.05, "ssagan": 0.05, "attngan_style": 5.0, "style1attngan": 5.0, "attngan": 5.0}
# The training recipe a paper-table row of an architecture trains with, where it is not the config's
# (DF-GAN's Adam, which the SSAGAN rows keep): AttnGAN's Adam, 2e-4 for G and every D, betas
# (0.5, 0.999) (`taoxugit/AttnGAN` code/trainer.py define_optimizers, code/cfg/bird_attn2.yml), and
# the EMA of G's weights it samples from, decay 0.999 (code/trainer.py avg_param_G). The style rows
# (Style1/Style2AttnGAN) take it too: seed paper 001 builds them on AttnGAN's training setup. They
# keep this project's hinge + mismatched pairs + MA-GP adversarial loss, our reading of the paper's
# "normal adversarial loss" for them (README "The papers' tables"); plain AttnGAN has its own BCE
# objective (t2i_ray/train/gan.py). Keys fixed with --set/--config win over these.
ATTNGAN_RECIPE: dict[str, Any] = {"train.lr_g": 2e-4, "train.lr_d": 2e-4, "train.beta1": 0.5,
                                  "train.beta2": 0.999, "train.g_ema": 0.999}
ARCH_RECIPES: dict[str, dict[str, Any]] = {
    "attngan": ATTNGAN_RECIPE, "attngan_style": ATTNGAN_RECIPE, "style1attngan": ATTNGAN_RECIPE,
}

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
# (lambda = 5). "Style2AttnGAN" is `attngan_style` (StyleGAN2 blocks with AttnGAN's word attention),
# "Style1AttnGAN" `style1attngan` (the same text-conditional StyleGAN2 generator without word
# attention; t2i_ray/models/stylegan_attn.py has the reading), "AttnGAN" plain three-stage AttnGAN.
# UNBUILT_ARCHS would list an architecture of the tables that is not built, with the reason, so that
# a request for its rows fails with a clear message; every one is built now.
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
UNBUILT_ARCHS: dict[str, str] = {}


# The rows `--table cub` runs when --rows is not given: Table 1's SSA-GAN rows, the model seed paper 001
# builds its contrastive losses on and the cheapest of its architectures (the main job's laptop design
# picks its own rows: sweeps/ablate_losses.py LAPTOP_ROWS). `--all-rows` runs every built row.
DEFAULT_PAPER_ROWS: dict[str, tuple[str, ...]] = {
    "cub": ("SSAGAN", "SSAGAN + CL (F2F)", "SSAGAN + CL (R2F+F2F)", "SSAGAN + CL (R2F+F2F+R)"),
    "coco": tuple(PAPER_TABLES["coco"]),
}


def default_paper_rows(table: str) -> list[str]:
    """The rows a `--table` run sweeps by default (the built ones of DEFAULT_PAPER_ROWS)."""
    built = set(paper_rows(table))
    return [r for r in DEFAULT_PAPER_ROWS[table] if r in built]


def paper_rows(table: str, built_only: bool = True) -> list[str]:
    """The row names of a paper table, in the paper's order (only buildable ones by default)."""
    rows = PAPER_TABLES[table]
    return [r for r, (arch, _) in rows.items() if not (built_only and arch in UNBUILT_ARCHS)]


def paper_row_overrides(table: str, row: str, weights: dict[str, float | None] | None = None,
                        fixed: Collection[str] = ()) -> dict[str, Any]:
    """Config overrides for one row of a paper table: model.arch, the loss weights and the
    architecture's training recipe (ARCH_RECIPES: AttnGAN's Adam and G EMA) except the keys in
    `fixed` (set by the user)."""
    if table not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {table!r}; tables: {', '.join(PAPER_TABLES)}")
    rows = PAPER_TABLES[table]
    if row not in rows:
        raise ValueError(f"table {table!r} has no row {row!r}; its rows: {', '.join(map(repr, rows))}")
    arch, terms = rows[row]
    if arch in UNBUILT_ARCHS:
        raise ValueError(f"row {row!r} of table {table!r}: {UNBUILT_ARCHS[arch]}; rows that run: "
                         f"{', '.join(map(repr, paper_rows(table)))}")
    recipe = {k: v for k, v in ARCH_RECIPES.get(arch, {}).items() if k not in fixed}
    return {"model.arch": arch, **recipe, **terms_overrides(terms, weights, arch)}


def embedding_row_overrides(row: str) -> dict[str, Any]:
    if row not in EMBEDDING_ROWS:
        raise ValueError(f"unknown text-embedding row {row!r}; rows: {', '.join(EMBEDDING_ROWS)}")
    return dict(EMBEDDING_ROWS[row])


def optuna_space(max_weight: dict[str, float] | None = None,
                 terms: tuple[str, ...] = ("l1", "l2", "l3", "l4"), arch: str = "dfgan") -> dict[str, str]:
    """The default Optuna space: the continuous weights of `terms`, uniform from 0 to 5x the
    paper's (l1: 5x the architecture's, ARCH_L1), as range specs (`tune_domain` builds them; plain
    text keeps the sweep's name, a hash of its settings, the same from one run to the next)."""
    hi = {name: 5 * v for name, v in resolved_weights(None, arch).items()} | (max_weight or {})
    return {WEIGHT_KEYS[name]: f"float:{0.0!r}:{float(hi[name])!r}" for name in terms}


# ---- Any config key: grid axes (--sweep) and Optuna ranges (--space) ----------------------------

# Keys a sweep option may not vary: the seed has --seeds, and the output folder and the run's label
# are not settings of a training.
RESERVED_KEYS = {"seed": "use --seeds", "output_dir": "use --output-dir", "name": "it is the row's label"}
RANGE_KINDS = ("float", "log", "int")


def _leaf_type(base, key: str, option: str) -> str:
    """The annotation of config leaf `key` ("int", "float", "str | None", ...); ConfigError naming
    the option and the key when it is not a leaf of the config tree."""
    import dataclasses

    from t2i_ray.config import ConfigError

    if key in RESERVED_KEYS:
        raise ConfigError(f"{option} {key}: cannot be swept; {RESERVED_KEYS[key]}")
    node, parts = base, key.split(".")
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(node)}
        if part not in names:
            where = ".".join(parts[:i]) or "the config"
            valid = [n for n in names if i + 1 < len(parts) or not dataclasses.is_dataclass(getattr(node, n))]
            raise ConfigError(f"{option} {key}: unknown config key; valid keys in {where}: {', '.join(valid)}")
        value = getattr(node, part)
        if dataclasses.is_dataclass(value):
            if i + 1 == len(parts):
                raise ConfigError(f"{option} {key}: a config section, not a key; e.g. {key}."
                                  f"{dataclasses.fields(value)[0].name}")
            node = value
        elif i + 1 < len(parts):
            raise ConfigError(f"{option} {key}: {'.'.join(parts[:i + 1])} is a key, not a section")
        else:
            return str(names[part].type)
    raise AssertionError(key)


def parse_sweep_axis(text: str, base) -> tuple[str, list[tuple[str, Any]]]:
    """`--sweep train.lr_g=1e-4,2e-4` -> ("train.lr_g", [("1e-4", 0.0001), ("2e-4", 0.0002)]): the
    key and its values, each as given (for labels) and typed as the config types it. Values are split
    on ";" when the text has one (for list-valued string fields: `diffusion.dim_mults=1,2;1,2,4`),
    else on ",". Types are checked here; ranges and combinations per trial (`expand_grid`)."""
    from t2i_ray.config import ConfigError, coerce_value

    if "=" not in text:
        raise ConfigError(f"--sweep {text!r}: must look like section.key=v1,v2 (e.g. train.lr_g=1e-4,2e-4)")
    key, raw = (s.strip() for s in text.split("=", 1))
    leaf = _leaf_type(base, key, "--sweep")
    texts = [v.strip() for v in raw.split(";" if ";" in raw else ",")]
    if any(not t for t in texts):
        raise ConfigError(f"--sweep {key}: empty value in {raw!r}; give values separated by commas, e.g. {key}=a,b")
    if len(texts) < 2:
        raise ConfigError(f"--sweep {key}: one value ({raw!r}) is not a sweep; use --set {key}={raw} "
                          f"or give two or more values")
    values: list[tuple[str, Any]] = []
    for t in texts:
        value = None if t.lower() in ("none", "null") else t
        typed = coerce_value(value, leaf, f"--sweep {key}={t}: {key}")  # ranges: checked per trial
        seen = [v for v in values if v[1] == typed]
        if seen:
            raise ConfigError(f"--sweep {key}: {t!r} is the same value as {seen[0][0]!r}; give each value once")
        values.append((t, typed))
    return key, values


def parse_space_range(text: str, base) -> tuple[str, str]:
    """`--space train.lr_g=log:1e-5:1e-3` -> ("train.lr_g", "log:1e-05:0.001"), validated: the key a
    numeric leaf, `int:a:b` only for integer keys (a..b inclusive), `float:a:b` and `log:a:b`
    (log-uniform, a > 0) for number keys, a < b, and both ends valid values of the key."""
    from t2i_ray.config import ConfigError, apply_overrides

    if "=" not in text:
        raise ConfigError(f"--space {text!r}: must look like section.key=KIND:LOW:HIGH with KIND one of "
                          f"{', '.join(RANGE_KINDS)} (e.g. train.lr_g=log:1e-5:1e-3)")
    key, spec = (s.strip() for s in text.split("=", 1))
    leaf = _leaf_type(base, key, "--space").replace(" | None", "")
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] not in RANGE_KINDS:
        raise ConfigError(f"--space {key}={spec}: must be KIND:LOW:HIGH with KIND one of {', '.join(RANGE_KINDS)} "
                          f"(e.g. {key}=float:0:1, log:1e-5:1e-3, int:1:8)")
    kind = parts[0]
    if leaf not in ("int", "float"):
        raise ConfigError(f"--space {key}: a {leaf} key, not a number; Optuna ranges need an int or float key "
                          f"(use --sweep {key}=a,b for a grid over its values)")
    if kind == "int" and leaf != "int":
        raise ConfigError(f"--space {key}: a float key; use float:{parts[1]}:{parts[2]} or log:... instead of int:")
    if kind != "int" and leaf == "int":
        raise ConfigError(f"--space {key}: an integer key; use int:{parts[1]}:{parts[2]}")
    try:
        lo, hi = (int(p) if kind == "int" else float(p) for p in parts[1:])
    except ValueError:
        raise ConfigError(f"--space {key}={spec}: bounds must be {'integers' if kind == 'int' else 'numbers'}, "
                          f"got {parts[1]!r} and {parts[2]!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"--space {key}={spec}: needs finite bounds with LOW < HIGH, got {lo} and {hi}")
    if kind == "log" and lo <= 0:
        raise ConfigError(f"--space {key}={spec}: log ranges need LOW > 0, got {lo}")
    for end in (lo, hi):
        try:
            apply_overrides(base, {key: end})
        except ConfigError as exc:
            raise ConfigError(f"--space {key}={spec}: the bound {end:g} is not a valid value: {exc}") from None
    return key, f"{kind}:{lo!r}:{hi!r}"


def tune_domain(spec: str):
    """A Ray Tune domain for a range spec of `parse_space_range` (OptunaSearch turns it into the
    matching Optuna distribution)."""
    from ray import tune

    kind, lo, hi = spec.split(":")
    if kind == "int":
        return tune.randint(int(lo), int(hi) + 1)  # Tune's upper bound is exclusive
    return (tune.loguniform if kind == "log" else tune.uniform)(float(lo), float(hi))


def axis_labels(keys: list[str]) -> dict[str, str]:
    """Short names of swept keys for row labels: the last part (`lr_g`) unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
