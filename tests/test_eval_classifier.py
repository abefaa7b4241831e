"""Classifier test: AUC 0.5 for one distribution, near 1 for separable ones, seeded, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from showerformer.errors import InputError
from showerformer.evaluation.classifier import ClassifierConfig, run_classifier


def _small(**kw) -> ClassifierConfig:
    base = {"hidden": (32, 32, 32), "epochs": 4, "n_repeats": 2, "lr": 2e-3}
    base.update(kw)
    return ClassifierConfig.cpu_friendly(**base)


def test_same_distribution_gives_auc_one_half():
    rng = np.random.default_rng(0)
    ref, gen = rng.normal(size=(10_000, 4)), rng.normal(size=(10_000, 4))
    res = run_classifier(ref, gen, _small(n_repeats=3))
    assert abs(res.auc_mean - 0.5) < 0.03
    assert all(abs(a - 0.5) < 0.05 for a in res.aucs)
    assert abs(res.jsd_mean) < 0.05
    assert len(res.aucs) == 3 and res.auc_std > 0
    assert res.n_per_class == 10_000 and res.n_split == (6000, 2000, 2000)
    assert res.input_dim == 4 and all(1 <= e <= 4 for e in res.best_epochs)


def test_different_distributions_give_high_auc():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(3000, 4))
    gen = rng.normal(size=(2500, 4)) * np.array([1.0, 1.0, 2.0, 1.0]) + np.array([2.5, 0, 0, 0])
    res = run_classifier(ref, gen, _small())
    assert res.auc_mean > 0.9
    assert res.jsd_mean > 0.3
    assert res.n_per_class == 2500  # balanced classes: the larger sample is cut


def test_input_preprocessing_options():
    rng = np.random.default_rng(6)
    # a difference far below the inputs' spread and offset: log-energy-like columns
    base = rng.uniform(3, 5, size=(3000, 1))
    ref = np.hstack([base, base + rng.normal(0.00, 0.01, size=(3000, 1))])
    base2 = rng.uniform(3, 5, size=(3000, 1))
    gen = np.hstack([base2, base2 + rng.normal(0.04, 0.01, size=(3000, 1))])
    kw = {"epochs": 10, "batch_size": 200, "n_repeats": 1}
    plain = run_classifier(ref, gen, _small(whiten=False, **kw))
    res = run_classifier(ref, gen, _small(standardize=True, whiten=False, **kw))
    assert res.auc_mean > 0.9 and res.auc_mean > plain.auc_mean + 0.05
    assert "standardized inputs" in res.config.describe()
    assert not ClassifierConfig(standardize=True).is_official()
    # whitening decorrelates the two columns: their difference becomes one input
    white = run_classifier(ref, gen, _small(whiten=True, **kw))
    assert white.auc_mean > 0.95 and white.auc_mean > plain.auc_mean + 0.05
    assert white.input_dim == 2 and "whitened inputs" in white.config.describe()
    assert not ClassifierConfig(whiten=True).is_official()
    assert ClassifierConfig.cpu_friendly().whiten


def test_whitening_drops_degenerate_directions():
    rng = np.random.default_rng(8)
    a = rng.normal(size=(2000, 2))
    b = rng.normal(size=(2000, 2)) + np.array([1.5, 0.0])
    ref = np.hstack([a, a[:, :1] * 2.0, np.ones((2000, 1))])  # a copy and a constant column
    gen = np.hstack([b, b[:, :1] * 2.0, np.ones((2000, 1))])
    res = run_classifier(ref, gen, _small(whiten=True, epochs=5, n_repeats=1))
    assert np.isfinite(res.auc_mean) and res.auc_mean > 0.8


def test_seeded_and_repeatable():
    rng = np.random.default_rng(2)
    ref, gen = rng.normal(size=(600, 3)), rng.normal(0.3, 1.0, size=(600, 3))
    cfg = _small(epochs=2, n_repeats=2)
    a, b = run_classifier(ref, gen, cfg), run_classifier(ref, gen, cfg)
    assert a.aucs == b.aucs and a.jsds == b.jsds
    c = run_classifier(ref, gen, _small(epochs=2, n_repeats=2, seed=7))
    assert c.aucs != a.aucs
    assert a.aucs[0] != a.aucs[1]  # each repeat has its own split and initialisation


def test_too_few_showers_says_how_many_are_needed():
    cfg = _small(epochs=1, n_repeats=1)  # 0.6/0.2/0.2 with >= 50 test and validation showers
    rng = np.random.default_rng(3)
    run_classifier(rng.normal(size=(250, 2)), rng.normal(size=(300, 2)), cfg)
    with pytest.raises(InputError, match="at least 250 in each sample"):
        run_classifier(rng.normal(size=(249, 2)), rng.normal(size=(300, 2)), cfg)


def test_bad_inputs():
    rng = np.random.default_rng(4)
    ok = rng.normal(size=(300, 3))
    nan = ok.copy()
    nan[17, 2] = np.nan
    with pytest.raises(InputError, match=r"generated classifier inputs contain NaN.*shower 17"):
        run_classifier(ok, nan, _small())
    with pytest.raises(InputError, match="same feature dimension"):
        run_classifier(ok, rng.normal(size=(300, 4)), _small())
    with pytest.raises(InputError, match="numeric"):
        run_classifier(ok[:, 0], ok, _small())
    with pytest.raises(InputError, match="empty"):
        run_classifier(np.zeros((0, 3)), ok, _small())
    with pytest.raises(InputError, match="split"):
        ClassifierConfig(split=(0.8, 0.2, 0.2))
    with pytest.raises(InputError, match="dtype"):
        ClassifierConfig(dtype="float16")


def test_settings_are_described():
    assert ClassifierConfig().is_official()
    assert "official settings" in ClassifierConfig().describe()
    cpu = ClassifierConfig.cpu_friendly()
    assert not cpu.is_official()
    line = cpu.describe()
    assert "256x256x256" in line and "20 epochs" in line and "NOT the official" in line
    assert ClassifierConfig().hidden == (2048, 2048, 2048) and ClassifierConfig().lr == 2e-4
    rng = np.random.default_rng(5)
    res = run_classifier(rng.normal(size=(300, 2)), rng.normal(size=(300, 2)),
                         _small(epochs=1, n_repeats=1))
    assert res.auc_std == 0.0 and "NOT the official" in res.summary()
    d = res.to_dict()
    assert d["config"]["hidden"] == [32, 32, 32] and d["n_split"] == [180, 60, 60]
