"""Pure statistics of one window column against its training summary: PSI, KS and their p-values.

The manifest keeps only a binned summary of each training feature (``model_store.FeatureSummary``:
quantile bins, their proportions, mean and std), never the rows, so every test here works on the bins.
When the number of training rows is known (``n_train``), the tests are two-sample tests: the training
proportions are themselves a sample (500 rows for the reference model, whose proportions wobble by
about ±0.013 per bin, as much as a 2,000-row window's own), and treating them as exact would flag
ever more unchanged features the longer the window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from inferpool.model_store import FeatureSummary

PSI_EPS = 1e-4
# One value in at least this share of a window's rows reads as a stuck feature (see ``stuck_pvalue``).
STUCK_SHARE = 0.5


def psi(expected: Sequence[float], actual_counts: Sequence[int] | np.ndarray, eps: float = PSI_EPS) -> float:
    """Population Stability Index, ``sum((a - e) * ln(a / e))`` over bins.

    ``expected`` are training proportions, ``actual_counts`` the window's counts in
    the same bins. Both proportions are floored at ``eps`` so an empty bin costs a
    large but finite amount instead of inf.
    """
    e = np.asarray(expected, dtype=np.float64)
    counts = np.asarray(actual_counts, dtype=np.float64)
    if e.shape != counts.shape or e.ndim != 1:
        raise ValueError(f"expected {e.shape} and actual_counts {counts.shape} must be 1-d and the same length")
    total = counts.sum()
    if total <= 0:
        raise ValueError("actual_counts is empty: PSI needs at least one observation")
    a = np.maximum(counts / total, eps)
    e = np.maximum(e, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_counts(summary: FeatureSummary, values: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in the summary's bins, [edge_i, edge_i+1) as np.histogram made them."""
    inner = np.asarray(summary.edges[1:-1], dtype=np.float64)
    idx = np.searchsorted(inner, values, side="right")
    return np.bincount(idx, minlength=len(summary.proportions))


def ks_statistic(summary: FeatureSummary, values: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the window and the training distribution.

    The training data itself is not kept, only its binned summary, so both CDFs are
    compared at the inner bin edges only: ``max_k |F_train(e_k) - F_window(e_k)|``
    with ``F(x) = P(X < x)``. That is a lower bound on the exact two-sample KS
    statistic, coarser the fewer bins there are (10 quantile bins by default).
    """
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0:
        raise ValueError("values is empty: KS needs at least one observation")
    inner = np.asarray(summary.edges[1:-1], dtype=np.float64)
    if inner.size == 0:
        return 0.0  # a constant training feature has one bin: nothing to compare at
    train_cdf = np.cumsum(summary.proportions)[:-1]
    window_cdf = np.searchsorted(v, inner, side="left") / v.size
    return float(np.max(np.abs(train_cdf - window_cdf)))


def chi2_pvalue(expected: Sequence[float], counts: Sequence[int] | np.ndarray, n_train: int | None) -> float:
    """p-value of "the window's bin counts come from the training distribution".

    With ``n_train``: the chi-square test of homogeneity of the 2 x k table (training counts,
    window counts), k-1 degrees of freedom. Without it (a manifest from before it was recorded):
    goodness of fit against ``expected`` taken as exact, which reads more noise as drift.
    """
    a = np.asarray(counts, dtype=np.float64)
    n = a.sum()
    if n <= 0:
        raise ValueError("counts is empty: the test needs at least one observation")
    e = np.asarray(expected, dtype=np.float64)
    if n_train is None:
        # A window row in a bin training never saw (proportion 0) is impossible under the null.
        exp = np.maximum(e, PSI_EPS) * n
        stat, used = float(np.sum((a - exp) ** 2 / exp)), e.size
    else:
        t = e * n_train
        keep = (a + t) > 0
        a, t = a[keep], t[keep]
        col = a + t
        exp_a, exp_t = col * n / (n + n_train), col * n_train / (n + n_train)
        stat, used = float(np.sum((a - exp_a) ** 2 / exp_a + (t - exp_t) ** 2 / exp_t)), int(keep.sum())
    if used < 2:
        return 1.0  # one bin: every row lands in it whatever happens
    return float(sps.chi2.sf(stat, used - 1))


def ks_pvalue(d: float, n: int, n_train: int | None) -> float:
    """p-value of a KS distance ``d`` between ``n`` window rows and the training data.

    Two-sample when ``n_train`` is known, through the effective size ``n * n_train / (n + n_train)``.
    ``d`` read at the bin edges only is never above the exact statistic, so the p-value errs high
    (fewer false alarms, a little less power), never low.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    n_eff = n if n_train is None else n * n_train / (n + n_train)
    return float(sps.kstwo.sf(d, max(1, round(n_eff))))


def stuck_pvalue(summary: FeatureSummary, values: np.ndarray) -> float | None:
    """For a window where one value fills at least ``STUCK_SHARE`` of the rows: the chance of that many
    training-like rows landing in its bin, an upper bound on the chance of them all being that value.

    None otherwise (and for a single row, or a feature training also saw as one value). A sensor that
    broke part way through the window fills it with its one value from then on: half of it is enough.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or summary.std == 0:
        return None
    uniq, counts = np.unique(v, return_counts=True)
    k = int(counts.argmax())
    if counts[k] < STUCK_SHARE * v.size:
        return None
    q = float(summary.proportions[int(bin_counts(summary, uniq[k : k + 1]).argmax())])
    return float(sps.binom.sf(counts[k] - 1, v.size, q))
