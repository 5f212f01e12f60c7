"""A linear probe: the reference every decoder reading should be compared with.

The critique of activation decoders (Li et al. 2025) asks for one: if a logistic regression on
the same activations recovers the attribute and the decoder does not, the information is there
and the decoder fails to read it; if neither does, the activations may not hold it.

We use scikit-learn's ``LogisticRegression`` (multinomial, L2, lbfgs) on standardised features:
a well-tested solver beats a hand-rolled one here, and the closed set of a relation's objects is
small. Labels are arbitrary strings; a training set with a single class predicts that class.
"""

from __future__ import annotations

import numpy as np


class LinearProbe:
    """``fit(x, labels)`` then ``predict(x)`` -> labels. ``x`` is [n, hidden] (tensor or array)."""

    def __init__(self, *, c: float = 1.0, max_iter: int = 2000, seed: int = 0):
        self.c, self.max_iter, self.seed = c, max_iter, seed
        self.model = None
        self.only = None  # the single training label, when there is just one

    def fit(self, x, labels) -> "LinearProbe":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, labels = _array(x), list(labels)
        if len(labels) != len(x) or not labels:
            raise ValueError(f"the probe needs one label per row, got {len(labels)} labels for "
                             f"{len(x)} rows")
        if len(set(labels)) == 1:
            self.only, self.model = labels[0], None
            return self
        self.only = None
        self.model = make_pipeline(StandardScaler(), LogisticRegression(
            C=self.c, max_iter=self.max_iter, random_state=self.seed))
        self.model.fit(x, np.array(labels, dtype=object))
        return self

    def predict(self, x) -> list[str]:
        x = _array(x)
        if self.only is not None:
            return [self.only] * len(x)
        if self.model is None:
            raise RuntimeError("fit the probe before predicting")
        return [str(p) for p in self.model.predict(x)]

    def accuracy(self, x, labels) -> float:
        labels = list(labels)
        pred = self.predict(x)
        return sum(p == y for p, y in zip(pred, labels)) / len(labels) if labels else 0.0


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
