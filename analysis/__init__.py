"""Analysis of sweep results: reads `<output_dir>/results/*.parquet` only, never imports t2i_ray.

load_results -> aggregate / compare_to_baseline (with provenance checks) -> ablation_table -> to_markdown / to_latex.
Diffusion studies (analysis/diffusion.py): guidance_curve, paper_reference_rows, compare_with_paper.
"""
from analysis.diffusion import PAPER_RESULTS, compare_with_paper, guidance_curve, paper_reference_rows
from analysis.load import load_results, locate_results
from analysis.stats import (aggregate, bootstrap_interval, bootstrap_pvalue, check_comparable, check_one_configuration,
                            compare_to_baseline, effects_vs_baseline, matching_baselines, metric_range)
from analysis.tables import ablation_table, configuration_labels, to_latex, to_markdown

__all__ = ["load_results", "locate_results", "aggregate", "bootstrap_pvalue", "check_comparable",
           "check_one_configuration", "compare_to_baseline", "bootstrap_interval", "effects_vs_baseline",
           "matching_baselines", "metric_range",
           "ablation_table", "configuration_labels", "to_markdown", "to_latex",
           "guidance_curve", "PAPER_RESULTS", "paper_reference_rows", "compare_with_paper"]
