"""Finished runs of the results table: find one by name or by its best metric, open its checkpoint,
re-score it under other evaluation settings (sweeps/sample.py, sweeps/evaluate.py).

A results row names everything its checkpoint needs (t2i_ray/sweep/run.py `run_files`): the
checkpoint folder (config.json, state.pt, vocab.json, assets.json), the DAMSM folder whose frozen
text encoder and vocabulary read the captions, and the vocabulary's fingerprint. Paths recorded on
another machine (results copied from a cluster) are looked up under the given output folder by
their last components, as analysis/ does for results.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from t2i_ray.config import EVAL_PATH_FIELDS, ConfigError, ExperimentConfig, apply_overrides
from t2i_ray.console import console
from t2i_ray.paths import RunPaths
from t2i_ray.sweep import store

# --best METRIC: the direction of each metric a results row may carry.
METRIC_MODES = {"fid": "min", "kid": "min", "r_precision": "max", "attr_pair_recall": "max", "is": "max",
                "fsd": "min", "layout_miou": "max", "semantic_recall": "max"}
# The columns that say how a metric was measured: rows that differ in them are not compared.
PROTOCOL_COLUMNS = {"fid": ("fid_backbone", "fid_num_fake", "fid_real_set", "fid_resize"),
                    "kid": ("fid_backbone", "fid_num_fake", "kid_subset_size", "kid_subsets"),
                    "r_precision": ("r_precision_backbone", "r_precision_num_images", "r_precision_candidates"),
                    "attr_pair_recall": ("attr_backbone", "attr_num_images"),
                    "is": ("is_backbone", "is_num_images", "is_splits"),
                    "fsd": ("fsd_num_fake", "fsd_num_real"),
                    "layout_miou": ("layout_backbone", "layout_weights_sha256", "layout_input_size",
                                    "layout_num_images"),
                    "semantic_recall": ("layout_backbone", "layout_weights_sha256", "layout_input_size",
                                        "semantic_recall_num_images", "semantic_recall_min_pixels")}


class RunError(LookupError):
    """A run cannot be found or opened; the message names what was looked for, where, and the fix."""


def _is_reevaluation(rows: pd.DataFrame) -> pd.Series:
    if "reevaluation_of" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows["reevaluation_of"].fillna("").astype(str) != ""


def results_table(output_dir: str | Path) -> pd.DataFrame:
    """Every row under `output_dir`; RunError saying where it looked when there is none."""
    rows = store.load_results(output_dir)
    if rows.empty:
        folder = store.results_dir(Path(output_dir).resolve())
        raise RunError(f"no results table at {folder} (no <run>.parquet files there): pass --output-dir, the "
                       f"folder a sweep wrote (its default is t2i_runs in the directory the sweep was started from)")
    return rows


def _listing(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def find_run(output_dir: str | Path, run_name: str) -> dict[str, Any]:
    """The row of `run_name`; RunError listing the runs there when it has none."""
    rows = results_table(output_dir)
    match = rows[rows["run_name"] == run_name]
    if match.empty:
        raise RunError(f"no run named {run_name!r} in {store.results_dir(Path(output_dir).resolve())}; runs there: "
                       f"{_listing(sorted(rows['run_name']))}")
    return _row_dict(match.iloc[0])


def _row_dict(row: pd.Series) -> dict[str, Any]:
    """Plain Python values (numpy scalars unwrapped); NaN, a column another row has, becomes None."""
    out = {}
    for k, v in row.items():
        v = v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v
        out[k] = None if isinstance(v, float) and math.isnan(v) else v
    return out


def best_run(output_dir: str | Path, metric: str, sweep: str | None = None) -> tuple[dict[str, Any], str]:
    """(row, one-line reason) of the finished run with the best final `metric` (lowest FID, highest
    R-precision, ...), among the runs of `sweep` or, without it, every run that is not a
    re-evaluation. Rows measured differently (backbone, sample count, ...) are refused together."""
    if metric not in METRIC_MODES:
        raise RunError(f"--best: unknown metric {metric!r}; available: {', '.join(METRIC_MODES)}")
    rows = results_table(output_dir)
    if sweep is not None:
        pool = rows[rows["sweep"] == sweep]
        if pool.empty:
            raise RunError(f"--sweep: no sweep named {sweep!r} in the results table; sweeps there: "
                           f"{_listing(sorted(set(rows['sweep'])))}")
    else:
        pool = rows[~_is_reevaluation(rows)]
    ok = pool[pool["status"] == "ok"]
    scored = ok[ok[metric].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))] \
        if metric in ok.columns else ok.iloc[:0]
    where = f"sweep {sweep}" if sweep else "the results table"
    if scored.empty:
        raise RunError(f"--best {metric}: no finished run of {where} has a {metric} "
                       f"({len(pool)} run(s), {len(ok)} finished); pick a run with --run")
    for col in PROTOCOL_COLUMNS[metric]:
        if col in scored.columns:
            values = sorted({str(v) for v in scored[col]})
            if len(values) > 1:
                sweeps = sorted(set(scored["sweep"]))
                raise RunError(f"--best {metric}: the runs of {where} measured {metric} differently ({col}: "
                               f"{', '.join(values)}), so their numbers do not compare; pick one sweep with "
                               f"--sweep (sweeps: {_listing(sweeps)})")
    pick = scored[metric].idxmin() if METRIC_MODES[metric] == "min" else scored[metric].idxmax()
    row = _row_dict(scored.loc[pick])
    word = "lowest" if METRIC_MODES[metric] == "min" else "highest"
    return row, f"{metric}={row[metric]:.4g}, the {word} of {len(scored)} finished run(s) of {where}"


def _relocated(recorded: str, depth: int, under: Path) -> list[Path]:
    """`recorded` and, when it is not here, its last `depth` components under `under`."""
    path = Path(recorded)
    return [path] + ([under.joinpath(*path.parts[-depth:])] if len(path.parts) >= depth else [])


def checkpoint_location(row: Mapping[str, Any], output_dir: str | Path, which: str = "last") -> str:
    """Where the row's checkpoint is (`which`: last, or best: the one kept by eval.every); RunError
    naming the recorded path and the places looked at when it is gone."""
    name = row["run_name"]
    if which == "best":
        recorded = row.get("best_checkpoint_path") or ""
        if not recorded:
            every = row.get("config.eval.every") or 0
            raise RunError(f"run {name} kept no best checkpoint (eval.every={every}: no evaluation during "
                           f"training); use --checkpoint last, or train with --set eval.every=STEPS")
    else:
        recorded = row.get("checkpoint_path") or ""
        if not recorded:
            raise RunError(f"run {name} has no checkpoint in its row (status {row.get('status')}: "
                           f"{row.get('error') or 'no error recorded'})")
    if "://" in recorded:
        return recorded
    out = Path(output_dir).resolve()
    # Ray Train keeps a run's checkpoints in <storage>/train/<run>/, a trial that trained in its own
    # process (t2i_ray/sweep/run.py `runs_in_trial`) in Tune's <storage>/tune/<sweep>/trial_<id>/.
    in_tune = Path(recorded).parent.name.startswith("trial_")
    candidates = _relocated(recorded, 3, RunPaths(out).ray / "tune") if in_tune \
        else _relocated(recorded, 2, RunPaths(out).ray / "train")
    for path in candidates:
        if (path / "state.pt").is_file():
            return str(path)
    raise RunError(f"the {which} checkpoint of run {name} is missing: no state.pt in "
                   f"{' or '.join(str(p) for p in candidates)}. Its Ray storage folder was moved or deleted; "
                   f"copy it back (or pass the --output-dir whose ray/{'tune' if in_tune else 'train'}/ holds it)")


def damsm_location(row: Mapping[str, Any], cfg: ExperimentConfig, output_dir: str | Path) -> str:
    """The DAMSM folder (frozen text encoder + vocabulary) the run trained with: the row's, the same
    folder under this output folder's cache, or (rows written before rows named it) the cache key
    its config gives."""
    from t2i_ray.train.damsm import damsm_dir

    out = Path(output_dir).resolve()
    candidates = _relocated(row["damsm_path"], 1, RunPaths(out).cached("damsm")) if row.get("damsm_path") else []
    candidates.append(damsm_dir(apply_overrides(cfg, {"output_dir": str(out)})))
    for path in candidates:
        if (path / "meta.json").is_file():
            return str(path)
    raise RunError(f"the DAMSM folder run {row['run_name']} trained with is missing (its frozen text encoder and "
                   f"vocabulary read the captions): looked in {', '.join(str(p) for p in dict.fromkeys(candidates))}. "
                   f"Copy the sweep's cache/damsm/ folder back under --output-dir")


def run_config(row: Mapping[str, Any]) -> ExperimentConfig:
    return ExperimentConfig.from_dict(json.loads(row["config_json"]))


def open_run(row: Mapping[str, Any], output_dir: str | Path, which: str = "last", device: str = "cpu",
             overrides: Mapping[str, Any] | None = None):
    """The row's trained method (t2i_ray.train.method.TrainedRun), its config pointed at
    `output_dir` (caches, samples) plus `overrides`."""
    from t2i_ray.train.method import load_trained

    if row.get("status") != "ok":
        raise RunError(f"run {row['run_name']} did not finish (status {row.get('status')}: "
                       f"{row.get('error') or 'no error recorded'}); pick a finished run")
    cfg = run_config(row)
    location = checkpoint_location(row, output_dir, which)
    damsm = damsm_location(row, cfg, output_dir)
    return load_trained(location, damsm, device, {"output_dir": str(Path(output_dir).resolve()), **(overrides or {})})


def check_eval_overrides(overrides: Mapping[str, Any]) -> None:
    """Re-evaluation changes how a checkpoint is scored, never what was trained: eval.* keys only."""
    for key in overrides:
        if not key.startswith("eval."):
            raise ConfigError(f"--set {key}: evaluate.py re-scores a trained checkpoint and changes only eval.* "
                              f"keys (the model, data and training stay those the run trained with); drop "
                              f"{key}, or train a new run with it")


def reevaluation_tag(base: ExperimentConfig, cfg: ExperimentConfig, which: str) -> str:
    """A short hash of what the re-evaluation changed (and which checkpoint it scored): the same
    settings give the same name, so rerunning them replaces their row instead of adding one."""
    before, after = base.to_dict()["eval"], cfg.to_dict()["eval"]
    changed = {k: v for k, v in after.items() if v != before.get(k) and k not in EVAL_PATH_FIELDS}
    blob = json.dumps({"eval": changed, "checkpoint": which}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:6]


def reevaluate(row: Mapping[str, Any], output_dir: str | Path, overrides: Mapping[str, Any], which: str = "last",
               device: str = "cpu", log: Callable[[str], None] = console) -> dict[str, Any]:
    """Score the row's checkpoint under its eval config with `overrides` (eval.* keys only) and
    write a new row `<run>-reeval-<tag>` (sweep `<sweep>-reeval-<tag>`) whose `reevaluation_of`
    names the original run; the original row is never touched. Returns the new row."""
    from t2i_ray.eval.evaluate import eval_asset_overrides, evaluate_method

    check_eval_overrides(overrides)
    if row.get("reevaluation_of"):
        raise RunError(f"run {row['run_name']} is itself a re-evaluation of {row['reevaluation_of']}; "
                       f"re-evaluate {row['reevaluation_of']} instead")
    base = run_config(row)
    cfg = apply_overrides(base, {**overrides, "output_dir": str(Path(output_dir).resolve())})  # bad values fail here
    # A missing Inception/CLIP file refuses before the checkpoint is loaded.
    overrides = {**overrides, **eval_asset_overrides(cfg)}
    original = row["run_name"]
    tag = reevaluation_tag(base, cfg, which)
    run_name, sweep = f"{original}-reeval-{tag}", f"{row['sweep']}-reeval-{tag}"
    start = time.time()
    trained = open_run(row, output_dir, which, device, overrides)
    log(f"[evaluate] {row['run_name']}: {which} checkpoint (step {trained.step}) {trained.checkpoint}")
    metrics = evaluate_method(trained.cfg, trained.method, trained.damsm, run_name)
    new = store.make_row(
        run_name=run_name, sweep=sweep, row=row["row"], seed=int(row["seed"]), status="ok", error=None,
        wall_time_s=time.time() - start, config=trained.cfg.to_dict(), metrics={"step": trained.step, **metrics},
        version=store.code_version(),
        extra={"reevaluation_of": original, "reevaluated_checkpoint": which, "checkpoint_path": trained.checkpoint,
               "eval_overrides": json.dumps(dict(overrides), sort_keys=True, default=str),
               "damsm_path": str(trained.damsm.path), "captioner_path": row.get("captioner_path") or "",
               "vocab_fingerprint": trained.damsm.vocab.fingerprint(),
               "vocab_path": f"{trained.checkpoint}/vocab.json"})
    store.write_row(output_dir, new)
    return new


__all__ = ["METRIC_MODES", "RunError", "best_run", "check_eval_overrides", "checkpoint_location", "damsm_location",
           "find_run", "open_run", "reevaluate", "reevaluation_tag", "results_table", "run_config"]
