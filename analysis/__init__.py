"""Analysis of sweep results: reads `<output_dir>/results/*.parquet` only, never imports t2i_ray.

load_results -> aggregate / compare_to_baseline (with provenance checks) -> ablation_table -> to_markdown / to_latex.
"""
from analysis.load import load_results, locate_results
from analysis.stats import aggregate, bootstrap_pvalue, check_comparable, check_one_configuration, compare_to_baseline
from analysis.tables import ablation_table, configuration_labels, to_latex, to_markdown

__all__ = ["load_results", "locate_results", "aggregate", "bootstrap_pvalue", "check_comparable",
           "check_one_configuration", "compare_to_baseline",
           "ablation_table", "configuration_labels", "to_markdown", "to_latex"]
