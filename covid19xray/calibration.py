"""Does "covid 0.93" mean 93%? Calibration beside discrimination, and its simplest repair.

Accuracy, sensitivity and AUC say how a model ranks and cuts; calibration says whether its
probabilities can be read as probabilities. Every labelled report gives, as Van Calster et al.
("Calibration: the Achilles heel of predictive analytics", BMC Medicine 2019) ask:

- the Brier score (the mean squared error of the positive class's probability, with two
  classes; with more, of every class's, summed: the multiclass Brier score; 0 is perfect) with
  its 95% bootstrap interval, beside the Brier score of always saying the base rates, which
  knows nothing of the image;
- the expected calibration error: the images put in 10 bins of equal width by the probability
  they were given, the mean gap between each bin's mean probability and how often the class
  was true there, weighted by the bin's size;
- the calibration intercept and slope, with their 95% intervals: the logistic regression of
  the truth on the logit of the probability. The intercept is fitted with the slope held at 1
  ("calibration-in-the-large": negative when the model says the class too often), the slope
  with its own intercept (below 1: probabilities too extreme, the model overconfident). Perfect
  calibration is 0 and 1. With more than two classes, each class against the rest.

`Recalibration` is the update a new site fits on its own labelled films (Steyerberg et al.
2004): an intercept and a slope on the logit of the positive class (two classes), or a
temperature and per-class offsets on the log-probabilities (more), chosen as the simplest the
data support. It cannot change how the model ranks: it makes its numbers honest for that site.
"""

import dataclasses
import json

import numpy as np

from .cli import lazy_import
from .report import CONFIDENCE

# imported at first use: --help and a bad flag answer before SciPy loads
optimize = lazy_import("scipy.optimize")
stats = lazy_import("scipy.stats")

# The expected calibration error's bins: equal width on [0, 1].
ECE_BINS = 10
# Probabilities are clipped this far from 0 and 1 before their logit: a saturated softmax
# (p = 1.0) would otherwise have an infinite one.
EPSILON = 1e-7
BOOTSTRAP_RESAMPLES = 1000
FORMAT_VERSION = 1


def logit(p):
    p = np.clip(np.asarray(p, np.float64), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


def brier(onehot, probabilities):
    """The multiclass Brier score of each image: the squared distance of its probabilities to
    its one-hot truth (with two classes, twice the binary Brier score of either class)."""
    return ((np.asarray(probabilities, np.float64) - onehot) ** 2).sum(axis=1)


def _bootstrap_interval(values, seed):
    """The 95% percentile bootstrap interval of the mean of `values`."""
    rng = np.random.default_rng(seed)
    means = [rng.choice(values, len(values)).mean() for _ in range(BOOTSTRAP_RESAMPLES)]
    low, high = np.percentile(means, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return [float(low), float(high)]


def expected_calibration_error(is_class, probability, bins=ECE_BINS):
    """The ECE of one class's probabilities, and the reliability diagram's bins: [(lower edge,
    count, mean probability, share that were the class)], empty bins included with None."""
    is_class = np.asarray(is_class, np.float64)
    probability = np.asarray(probability, np.float64)
    # bin k holds [k/bins, (k+1)/bins); the last also holds 1.0
    index = np.minimum((probability * bins).astype(int), bins - 1)
    rows, gap = [], 0.0
    for k in range(bins):
        inside = index == k
        n = int(inside.sum())
        if n:
            mean, observed = float(probability[inside].mean()), float(is_class[inside].mean())
            gap += n * abs(mean - observed)
            rows.append([k / bins, n, mean, observed])
        else:
            rows.append([k / bins, 0, None, None])
    return gap / len(probability), rows


def _logistic(y, x, offset):
    """Newton-Raphson for P(y) = sigmoid(offset + X b): the coefficients and their standard
    errors (from the inverse of the information matrix), or None where the fit does not exist
    (the classes separated perfectly, or one class absent)."""
    b = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(offset + x @ b, -700, 700)))
        w = p * (1 - p)
        information = x.T @ (x * w[:, None])
        try:
            step = np.linalg.solve(information, x.T @ (y - p))
        except np.linalg.LinAlgError:
            return None
        b = b + step
        if np.abs(step).max() < 1e-10:
            break
    else:
        return None
    if not np.all(np.isfinite(b)) or np.abs(b).max() > 1e3:
        return None
    covariance = np.linalg.inv(information)
    return b, np.sqrt(np.diag(covariance))


def _with_interval(value, error):
    z = stats.norm.ppf((1 + CONFIDENCE) / 2)
    return {"value": float(value), "ci95": [float(value - z * error), float(value + z * error)]}


def intercept_and_slope(is_class, probability):
    """The calibration intercept (slope held at 1) and slope, each {"value", "ci95"}, or None
    where the logistic fit does not exist."""
    y = np.asarray(is_class, np.float64)
    z = logit(probability)
    if y.min() == y.max():
        return None, None
    large = _logistic(y, np.ones((len(y), 1)), z)
    both = _logistic(y, np.column_stack([np.ones(len(y)), z]), np.zeros(len(y)))
    return (None if large is None else _with_interval(large[0][0], large[1][0]),
            None if both is None else _with_interval(both[0][1], both[1][1]))


def calibration(true_classes, probabilities, class_names, positive=0, seed=0):
    """Everything a report says of calibration (module docstring): {"brier", "base_rate_brier",
    "bins", "per_class": {class: {"ece", "intercept", "slope", "bins"}}}; with two classes also
    the positive class's `ece`, `intercept` and `slope` at the top."""
    true_classes = np.asarray(true_classes)
    probabilities = np.asarray(probabilities, np.float64)
    onehot = np.eye(len(class_names))[true_classes]
    # two classes: the positive class's Brier score, as the literature reports it
    columns = [positive] if len(class_names) == 2 else list(range(len(class_names)))
    scores = brier(onehot[:, columns], probabilities[:, columns])
    rates = onehot.mean(axis=0)
    base = brier(onehot[:, columns], np.broadcast_to(rates, onehot.shape)[:, columns])
    result = {"brier": {"value": float(scores.mean()), "ci95": _bootstrap_interval(scores, seed)},
              "base_rate_brier": {"value": float(base.mean()),
                                  "ci95": _bootstrap_interval(base, seed)},
              "ece_bins": f"{ECE_BINS} bins of equal width on [0, 1]",
              "per_class": {}}
    for c, name in enumerate(class_names):
        ece, bins = expected_calibration_error(true_classes == c, probabilities[:, c])
        intercept, slope = intercept_and_slope(true_classes == c, probabilities[:, c])
        result["per_class"][name] = {"ece": ece, "intercept": intercept, "slope": slope,
                                     "bins": bins}
    if len(class_names) == 2:
        chosen = result["per_class"][class_names[positive]]
        result.update(positive_class=class_names[positive], ece=chosen["ece"],
                      intercept=chosen["intercept"], slope=chosen["slope"])
    return result


def describe_interval(name, m):
    if m is None:
        return f"{name}: undefined (the classes are separated perfectly, or one is absent)"
    # "to", not a dash: intercepts and slopes go negative ("-5.520 to -3.889", not "-5.520--3.889")
    return f"{name}: {m['value']:.3f} (95% CI {m['ci95'][0]:.3f} to {m['ci95'][1]:.3f})"


def print_calibration(result):
    """The lines a labelled report adds for calibration."""
    brier_score, base = result["brier"], result["base_rate_brier"]
    print(f"calibration: {describe_interval('Brier', brier_score)}; always the base rates: "
          f"{base['value']:.3f}")
    if "positive_class" in result:
        print(f"  {result['positive_class']}: expected calibration error {result['ece']:.3f} "
              f"({ECE_BINS} bins); {describe_interval('intercept', result['intercept'])} "
              f"(0 is calibrated); {describe_interval('slope', result['slope'])} (1 is)")
        return
    for name, m in result["per_class"].items():
        print(f"  {name}: expected calibration error {m['ece']:.3f} ({ECE_BINS} bins); "
              f"{describe_interval('intercept', m['intercept'])}; "
              f"{describe_interval('slope', m['slope'])}")


# ---------------------------------------------------------------------------------------------
# Recalibration for a new site
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recalibration:
    """An update of a model's probabilities fitted at a new site. Two classes: p(positive) =
    sigmoid(intercept + slope * logit(p)). More: softmax(log(p) / temperature + offsets).
    `fitted_on` films of `folder`, `kind` the update chosen."""

    kind: str  # "intercept", "intercept and slope", "temperature and offsets"
    intercept: float = 0.0
    slope: float = 1.0
    positive: int = 0
    temperature: float = 1.0
    offsets: tuple = ()
    fitted_on: int = 0
    folder: str = ""

    def apply(self, probabilities):
        """The recalibrated probabilities of an (n, classes) array."""
        p = np.asarray(probabilities, np.float64)
        if self.offsets:
            z = np.log(np.clip(p, EPSILON, 1)) / self.temperature + np.asarray(self.offsets)
            z -= z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        q = 1 / (1 + np.exp(-(self.intercept + self.slope * logit(p[:, self.positive]))))
        out = np.empty_like(p)
        out[:, self.positive] = q
        out[:, 1 - self.positive] = 1 - q
        return out.astype(np.float32)

    def to_json(self):
        return json.dumps({"version": FORMAT_VERSION, **dataclasses.asdict(self)})

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        if data.pop("version", None) != FORMAT_VERSION:
            raise ValueError("another format version")
        data["offsets"] = tuple(data.get("offsets", ()))
        return cls(**data)

    def summary(self):
        """`recalibrated on 110 films of external/ (intercept and slope)`."""
        return f"recalibrated on {self.fitted_on} films of {self.folder} ({self.kind})"


# Below this many films of a class the fit rests on a handful of cases, one of which can swing
# it: a floor this project sets (the maximum-likelihood fit itself needs one of each class,
# not separated perfectly from the other).
MIN_PER_CLASS = 5
# Below this many of a class, calibration measured on a sample is unreliable (Van Calster et
# al. 2016 and Riley et al. 2021 ask for at least 100 events and 100 non-events).
ADVISED_PER_CLASS = 100
# What the slope must earn to enter: Akaike's criterion charges each parameter 2 (in twice the
# log-likelihood; for one parameter, a likelihood-ratio test at p < 0.157). The choice is for
# prediction, not a hypothesis test: a 5% test kept the model's own, overconfident slope in 2
# of 5 folds on external/ (docs/calibration.md).
AIC_PARAMETER_COST = 2.0


def _log_likelihood(y, linear):
    return float(np.sum(y * linear - np.logaddexp(0, linear)))


def fit_recalibration(true_classes, probabilities, class_names, positive=0, folder=""):
    """The simplest update the films support (`Recalibration`). Two classes: the intercept
    alone (the slope held at 1), and the slope too when it lowers Akaike's information
    criterion (twice the log-likelihood it gains exceeds AIC_PARAMETER_COST). More: a
    temperature and per-class offsets (the first class's held at 0), by maximum likelihood.
    Raises ValueError when no fit exists (the classes separated perfectly)."""
    true_classes = np.asarray(true_classes)
    p = np.asarray(probabilities, np.float64)
    n = len(true_classes)
    if len(class_names) == 2:
        y = (true_classes == positive).astype(np.float64)
        z = logit(p[:, positive])
        ones = np.ones((n, 1))
        large = _logistic(y, ones, z)
        both = _logistic(y, np.column_stack([ones, z]), np.zeros(n))
        if large is None:
            raise ValueError("the films' classes are separated perfectly: no intercept fits")
        alone = Recalibration("intercept", intercept=float(large[0][0]), positive=positive,
                              fitted_on=n, folder=folder)
        if both is None:
            return alone
        a, b = both[0]
        gain = 2 * (_log_likelihood(y, a + b * z) - _log_likelihood(y, large[0][0] + z))
        if gain > AIC_PARAMETER_COST:
            return Recalibration("intercept and slope", intercept=float(a), slope=float(b),
                                 positive=positive, fitted_on=n, folder=folder)
        return alone
    log_p = np.log(np.clip(p, EPSILON, 1))
    k = len(class_names)

    def loss(theta):
        z = log_p * np.exp(theta[0]) + np.concatenate([[0.0], theta[1:]])
        return -float(np.sum(z[np.arange(n), true_classes] - np.logaddexp.reduce(z, axis=1)))

    fitted = optimize.minimize(loss, np.zeros(k), method="L-BFGS-B")
    if not fitted.success or not np.all(np.isfinite(fitted.x)):
        raise ValueError("no temperature and offsets fit these films")
    return Recalibration("temperature and offsets", temperature=float(np.exp(-fitted.x[0])),
                         offsets=tuple([0.0, *map(float, fitted.x[1:])]), fitted_on=n,
                         folder=folder)
