"""Isolation forests to native code (the score of their path lengths is served by the detector).

An isolation forest (Liu, Ting and Zhou 2008; scikit-learn's ``IsolationForest``) isolates
a flow by random splits: the fewer splits a flow needs on average, ``E[h(x)]``, the more
unusual it is. The score is ``s(x) = 2 ** (-E[h(x)] / c(psi))`` with ``psi`` the rows each
tree was grown on (``max_samples``) and ``c(n)`` the average path length of an unsuccessful
search in a binary search tree of n keys; ``s`` lies in (0, 1], about 0.5 and below for
ordinary flows, towards 1 for flows that stand apart. scikit-learn's ``score_samples``
returns ``-s``.

:func:`isolation_to_treelite` builds the treelite model node by node, as
detector/compile.py does for the forests (treelite 4.1.2's sklearn importer fails under
NumPy 2). A leaf holds the path length scikit-learn adds for a flow that ends there: the
leaf's depth plus ``c(n)`` of the training rows that reached it (the isolation that did
not happen because the tree stopped growing). The model averages its trees, so the
compiled library returns ``E[h(x)]``; detector/anomaly_model.py's ``score_from_path``
turns it into ``s``.
Thresholds are rounded *down* to float32 as in detector/compile.py, so every float32
input takes scikit-learn's path; the only difference left is float32 leaf values and
summation (under 1e-6 on the score, tests/anomaly/test_isolation.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from base.errors import ModelError
from detector.anomaly_model import average_path_length

__all__ = ["fit_isolation_forest", "isolation_to_treelite"]


def fit_isolation_forest(
    x: npt.NDArray[np.float32], n_trees: int, max_samples: int, seed: int
) -> Any:
    """A fitted sklearn IsolationForest over all features (no feature subsampling)."""
    from sklearn.ensemble import IsolationForest  # imported late: the CLI starts without it

    forest = IsolationForest(
        n_estimators=n_trees,
        max_samples=min(max_samples, len(x)),
        max_features=1.0,
        random_state=seed,
        n_jobs=1,
    )
    forest.fit(x)
    return forest


def isolation_to_treelite(forest: Any) -> Any:
    """The treelite Model of a fitted sklearn IsolationForest: mean path length E[h(x)]."""
    from detector.compile import TreeArrays, trees_to_treelite

    n_features = int(forest.n_features_in_)
    estimators = forest.estimators_
    if not estimators:
        raise ModelError("the isolation forest has no trees")
    subsampled = int(forest._max_features) != n_features
    trees = []
    for estimator, features in zip(estimators, forest.estimators_features_, strict=True):
        tree = estimator.tree_
        # sklearn: decision path length (root = 1) + c(n at the node) - 1.
        depth = np.asarray(tree.compute_node_depths(), dtype=np.float64)
        leaf_value = depth + average_path_length(tree.n_node_samples) - 1.0
        feature = np.asarray(tree.feature)
        if subsampled:
            feature = np.where(feature >= 0, np.asarray(features)[np.maximum(feature, 0)], -1)
        trees.append(TreeArrays(tree.children_left, tree.children_right, feature,
                                tree.threshold, leaf_value))  # fmt: skip
    return trees_to_treelite(trees, n_features, "kRegressor")
