"""Smoke test of the detection-quality benchmark (``python -m pipelines.benchmark --quick``).

Runs the harness in-process on real data: the tabular quick mode (breastw, seed 0, the GAN at
150 steps and IsolationForest) and the NAB suite on two short series with a few GAN steps,
then checks the JSON / Markdown / plot outputs. Needs the shared datasets
(``$ANOMALY_DATASETS`` / ``$NAB_ROOT``); skipped when they are absent.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from anomaly.config import ScoringConfig
from pipelines import benchmark
from pipelines.bench import nab_corpus, nab_scorer, tabular, tail_study, timeseries, weights_study
from tests._support import unavailable

pytestmark = pytest.mark.slow


@pytest.fixture
def shared_data() -> None:
    if not _have_data():
        unavailable("the shared datasets were not found beside the checkout")


def _have_data() -> bool:
    tab = (tabular.datasets_dir() / "tabular" / f"{benchmark.QUICK_DATASET}.npz").is_file()
    root = nab_corpus._nab_root(None)
    series = all((root / "data" / name).is_file() for name in timeseries.QUICK_SERIES)
    return tab and series


@pytest.mark.usefixtures("shared_data")
def test_quick_benchmark_end_to_end(tmp_path, capsys):
    rc = benchmark.main(["--suite", "all", "--quick", "--nab-steps", "10", "--out", str(tmp_path)])
    assert rc == 0

    rows = json.loads((tmp_path / "tabular_results.json").read_text())
    by_method = {r["method"]: r for r in rows}
    assert {"gan", "iforest"} <= set(by_method)
    assert {
        "gan:only_reconstruction",
        "gan:only_feature",
        "gan:only_critic",
        "gan:only_latent",
        "gan:refined",
    } <= set(by_method)
    for row in rows:
        assert row["dataset"] == benchmark.QUICK_DATASET and row["seed"] == 0
        for metric in ("auroc", "auprc", "f1", "train_seconds", "score_seconds"):
            assert math.isfinite(row[metric]), (row["method"], metric)
        assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["auprc"] <= 1.0
    # breastw is easy: both detectors must be far better than chance
    assert by_method["gan"]["auroc"] > 0.8 and by_method["iforest"]["auroc"] > 0.8

    table = (tmp_path / "tabular.md").read_text()
    assert "| gan |" in table and "| iforest |" in table and "± 0.000" in table
    health = by_method["gan"]["health"]
    assert set(health) == {"mode_collapse", "diversity_ratio", "warnings"}
    assert "health" not in by_method["iforest"]
    assert "### Training health of the GAN fits" in table
    assert f"| gan | 1 | {int(health['mode_collapse'])} |" in table

    # every calibration score is kept, so the tail study refits the threshold the product set
    fit = np.load(tmp_path / "components" / f"{benchmark.QUICK_DATASET}__gan__seed0.npz")
    n = by_method["gan"]["calibration_rows"]
    assert len(fit["calibration_largest"]) == int(fit["calibration_n"]) == n
    capsys.readouterr()
    tail_study.real_fits(tmp_path / "components")
    assert f"| {benchmark.QUICK_DATASET} | {n} |" in capsys.readouterr().out

    # the weight study's exact latent distance is the product's where the prototypes are
    # every fitted code (breastw: 222 TRAIN rows, fewer than 256 prototypes) ...
    fits = weights_study.load_fits(tmp_path)
    (exact,) = weights_study.with_exact_latent(fits, ScoringConfig().latent_neighbours)
    latent = list(weights_study.COMPONENTS).index("latent")
    for part in ("test", "held_out", "synthetic"):
        np.testing.assert_allclose(exact[part][:, latent], fits[0][part][:, latent], atol=1e-3)
    # ... and no weighting's TEST AUROC in its ceiling is below a component's alone
    ceiling = weights_study.ceiling(fits)
    alone = max(by_method[f"gan:only_{name}"]["auroc"] for name in weights_study.COMPONENTS)
    assert ceiling["best_auroc"]["auroc_auprc"][0] >= alone - 1e-9

    result = json.loads((tmp_path / "nab_results.json").read_text())
    assert result["series"] == 2
    ablations = ("gan+conformal:fixed_history", "gan+conformal:refined")
    for detector in ("gan", "gan+conformal", "windowed_gaussian", "knn_cad", *ablations):
        for profile in nab_scorer.PROFILE_NAMES:
            assert math.isfinite(result["results"][detector][profile]["score"])
    assert "stage:conformal:event:own_statistics" in result["results"]
    # the product's stage starts from the model's own reference, kept beside the scores
    kept = [np.load(file) for file in sorted((tmp_path / "nab_scores").glob("*.npz"))]
    assert len(kept) == 2 and all(len(arrays["reference_score"]) == 2001 for arrays in kept)
    assert all(np.ptp(arrays["reference_latent"]) > 0 for arrays in kept)
    assert result["gan_refine_seconds_total"] > 0  # the refined ablation is timed
    assert "windowed_gaussian" in (tmp_path / "nab.md").read_text()
    assert "KNN-CAD" in (tmp_path / "nab.md").read_text()

    for plot in ("roc_seed0.png", "auroc_auprc_by_dataset.png", "nab_scores.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 1000


@pytest.mark.usefixtures("shared_data")
def test_the_nab_suite_runs_the_other_formulation(tmp_path):
    series = timeseries.QUICK_SERIES[0]
    argv = ["--suite", "nab", "--quick", "--nab-steps", "10", "--nab-formulation", "bigan"]
    assert benchmark.main([*argv, "--nab-series", series, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "nab_results.json").read_text())
    assert result["formulation"] == "bigan" and result["series"] == 1
    assert "| gan (bigan, window 32, 10 steps) |" in (tmp_path / "nab.md").read_text()


@pytest.mark.usefixtures("shared_data")
def test_a_nab_series_that_training_refuses_is_scored_as_never_flagged(tmp_path):
    """art_flatline's probationary windows are all the same, which `anomaly train` refuses;
    the suite goes on and scores it as a user without a model would see it: no flags."""
    series = "artificialNoAnomaly/art_flatline.csv"
    argv = ["--suite", "nab", "--quick", "--nab-steps", "10", "--nab-series", series]
    assert benchmark.main([*argv, "--out", str(tmp_path)]) == 0
    (logged,) = [
        json.loads(line) for line in (tmp_path / "nab_series.jsonl").read_text().splitlines()
    ]
    assert "do not vary" in logged["refused"]
    scores = np.load(tmp_path / "nab_scores" / "artificialNoAnomaly__art_flatline.csv.npz")
    assert not scores["score"].any() and not scores["raw_score"].any()
    assert json.loads((tmp_path / "nab_results.json").read_text())["series"] == 1
