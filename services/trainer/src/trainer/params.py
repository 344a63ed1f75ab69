"""What each estimator parameter may be: types, ranges and choices a request is checked against.

scikit-learn checks types itself, but only when ``fit`` runs in the worker, and it accepts values
no shared platform should run (``n_estimators`` of 10^8, ``n_jobs=-1``). Every parameter an
algorithm's constructor takes has a rule here (a test keeps it so across scikit-learn upgrades);
a parameter without one is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        # Compares Python ints exactly: 10**400 must not overflow into float.
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def json_schema(self) -> dict[str, float]:
        low = "exclusiveMinimum" if self.low_open else "minimum"
        high = "exclusiveMaximum" if self.high_open else "maximum"
        return {low: self.low, high: self.high}

    def __str__(self) -> str:
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"{left}{_number(self.low)}, {_number(self.high)}{right}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else repr(value)


@dataclass(frozen=True)
class Param:
    """One parameter's rule. A value passes when it fits any of the alternatives given."""

    ints: Interval | None = None
    numbers: Interval | None = None  # floats (ints are taken as floats too)
    choices: tuple[str, ...] = ()
    boolean: bool = False
    nullable: bool = False
    refused: str | None = None  # why the API never takes this parameter

    def describe(self) -> str:
        options: list[str] = []
        if self.ints is not None:
            options.append(f"an integer in {self.ints}")
        if self.numbers is not None:
            options.append(f"a number in {self.numbers}")
        if self.choices:
            options.append("one of " + ", ".join(repr(c) for c in self.choices))
        if self.boolean:
            options.append("true or false")
        if self.nullable:
            options.append("null")
        return " or ".join(options)

    def json_schemas(self) -> list[dict[str, Any]]:
        """The alternatives of this rule as JSON schemas (none when the API refuses it)."""
        if self.refused is not None:
            return []
        out: list[dict[str, Any]] = []
        if self.ints is not None:
            out.append({"type": "integer", **self.ints.json_schema()})
        if self.numbers is not None:
            out.append({"type": "number", **self.numbers.json_schema()})
        if self.choices:
            out.append({"type": "string", "enum": list(self.choices)})
        if self.boolean:
            out.append({"type": "boolean"})
        if self.nullable:
            out.append({"type": "null"})
        return out

    def error(self, name: str, value: Any) -> str | None:
        """Why ``value`` is not acceptable for parameter ``name``, or None when it is."""
        if self.refused is not None:
            return f"{name} cannot be set: {self.refused}"
        if value is None:
            ok = self.nullable
        elif isinstance(value, bool):
            ok = self.boolean
        elif isinstance(value, int):
            ok = (self.ints is not None and value in self.ints) or (
                self.numbers is not None and value in self.numbers
            )
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"{name} must be a finite number"
            ok = self.numbers is not None and value in self.numbers
        elif isinstance(value, str):
            ok = value in self.choices
        else:
            ok = False
        if ok:
            return None
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return f"{name} must be {self.describe()}; got {shown}"


def ints(low: int, high: int, *, nullable: bool = False) -> Param:
    return Param(ints=Interval(low, high), nullable=nullable)


def numbers(
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    nullable: bool = False,
) -> Param:
    return Param(numbers=Interval(low, high, low_open, high_open), nullable=nullable)


def choice(*options: str, nullable: bool = False, boolean: bool = False) -> Param:
    return Param(choices=options, nullable=nullable, boolean=boolean)


BOOL = Param(boolean=True)
PLATFORM_N_JOBS = Param(
    refused="the platform sets n_jobs (one core per job) so jobs cannot starve each other"
)
PLATFORM_VERBOSE = Param(refused="the platform sets verbose (training logs stay readable)")
NO_LISTS = "it takes a list or mapping, which the API does not accept"

# Bounds shared by several estimators.
MAX_ESTIMATORS = 5_000
MAX_DEPTH = 64
MAX_ITER = 100_000
MAX_SAMPLES_COUNT = 10_000_000
MAX_REGULARISATION = 1e6
MAX_TOL = 1e4

N_ESTIMATORS = ints(1, MAX_ESTIMATORS)
MAX_DEPTH_OR_NONE = ints(1, MAX_DEPTH, nullable=True)
RANDOM_STATE = ints(0, 2**32 - 1, nullable=True)  # numpy's seed range
TOL = numbers(0, MAX_TOL)
FIT_INTERCEPT = BOOL
LEARNING_RATE = numbers(0, 10, low_open=True)
MIN_SAMPLES_SPLIT = Param(
    ints=Interval(2, MAX_SAMPLES_COUNT), numbers=Interval(0, 1, low_open=True)
)
MIN_SAMPLES_LEAF = Param(
    ints=Interval(1, MAX_SAMPLES_COUNT), numbers=Interval(0, 0.5, low_open=True)
)
MIN_WEIGHT_FRACTION_LEAF = numbers(0, 0.5)
MAX_FEATURES = Param(
    ints=Interval(1, 100_000),
    numbers=Interval(0, 1, low_open=True),
    choices=("sqrt", "log2"),
    nullable=True,
)
MAX_LEAF_NODES = ints(2, 100_000, nullable=True)
NON_NEGATIVE = numbers(0, MAX_REGULARISATION)


def _forest(criteria: tuple[str, ...], class_weights: tuple[str, ...] | None) -> dict[str, Param]:
    rules = {
        "n_estimators": N_ESTIMATORS,
        "criterion": choice(*criteria),
        "max_depth": MAX_DEPTH_OR_NONE,
        "min_samples_split": MIN_SAMPLES_SPLIT,
        "min_samples_leaf": MIN_SAMPLES_LEAF,
        "min_weight_fraction_leaf": MIN_WEIGHT_FRACTION_LEAF,
        "max_features": MAX_FEATURES,
        "max_leaf_nodes": MAX_LEAF_NODES,
        "min_impurity_decrease": NON_NEGATIVE,
        "bootstrap": BOOL,
        "oob_score": BOOL,
        "n_jobs": PLATFORM_N_JOBS,
        "random_state": RANDOM_STATE,
        "verbose": PLATFORM_VERBOSE,
        "warm_start": BOOL,
        "ccp_alpha": NON_NEGATIVE,
        "max_samples": Param(
            ints=Interval(1, MAX_SAMPLES_COUNT),
            numbers=Interval(0, 1, low_open=True),
            nullable=True,
        ),
        "monotonic_cst": Param(refused=NO_LISTS),
    }
    if class_weights is not None:
        rules["class_weight"] = choice(*class_weights, nullable=True)
    return rules


def _gradient_boosting(losses: tuple[str, ...], regression: bool) -> dict[str, Param]:
    rules = {
        "loss": choice(*losses),
        "learning_rate": LEARNING_RATE,
        "n_estimators": N_ESTIMATORS,
        "subsample": numbers(0, 1, low_open=True),
        "criterion": choice("squared_error"),
        "min_samples_split": MIN_SAMPLES_SPLIT,
        "min_samples_leaf": MIN_SAMPLES_LEAF,
        "min_weight_fraction_leaf": MIN_WEIGHT_FRACTION_LEAF,
        "max_depth": MAX_DEPTH_OR_NONE,
        "min_impurity_decrease": NON_NEGATIVE,
        "init": choice("zero", nullable=True),
        "random_state": RANDOM_STATE,
        "max_features": MAX_FEATURES,
        "verbose": PLATFORM_VERBOSE,
        "max_leaf_nodes": MAX_LEAF_NODES,
        "warm_start": BOOL,
        "validation_fraction": numbers(0, 1, low_open=True, high_open=True),
        "n_iter_no_change": ints(1, 10_000, nullable=True),
        "tol": TOL,
        "ccp_alpha": NON_NEGATIVE,
    }
    if regression:
        rules["alpha"] = numbers(0, 1, low_open=True, high_open=True)
    return rules


def _hist_gradient_boosting(
    losses: tuple[str, ...], scorings: tuple[str, ...], regression: bool
) -> dict[str, Param]:
    rules = {
        "loss": choice(*losses),
        "learning_rate": LEARNING_RATE,
        # Each iteration adds a tree (one per class): as costly as n_estimators.
        "max_iter": ints(1, MAX_ESTIMATORS),
        "max_leaf_nodes": MAX_LEAF_NODES,
        "max_depth": MAX_DEPTH_OR_NONE,
        "min_samples_leaf": ints(1, MAX_SAMPLES_COUNT),
        "l2_regularization": NON_NEGATIVE,
        "max_features": numbers(0, 1, low_open=True),
        "max_bins": ints(2, 255),
        "categorical_features": choice("from_dtype", nullable=True),
        "monotonic_cst": Param(refused=NO_LISTS),
        "interaction_cst": choice("no_interactions", "pairwise", nullable=True),
        "warm_start": BOOL,
        "early_stopping": choice("auto", boolean=True),
        "scoring": choice("loss", *scorings, nullable=True),
        "validation_fraction": numbers(0, 1, low_open=True, high_open=True, nullable=True),
        "n_iter_no_change": ints(1, 10_000),
        "tol": TOL,
        "verbose": PLATFORM_VERBOSE,
        "random_state": RANDOM_STATE,
    }
    if regression:
        rules["quantile"] = numbers(0, 1, nullable=True)
    else:
        rules["class_weight"] = choice("balanced", nullable=True)
    return rules


CLASSIFICATION_SCORINGS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1",
    "f1_macro",
    "f1_weighted",
    "roc_auc",
    "neg_log_loss",
)
REGRESSION_SCORINGS: tuple[str, ...] = (
    "r2",
    "neg_mean_squared_error",
    "neg_root_mean_squared_error",
    "neg_mean_absolute_error",
)

LOGISTIC_REGRESSION: dict[str, Param] = {
    "penalty": choice("l1", "l2", "elasticnet", nullable=True),
    "C": numbers(0, MAX_REGULARISATION, low_open=True),
    "l1_ratio": numbers(0, 1, nullable=True),
    "dual": BOOL,
    "tol": TOL,
    "fit_intercept": FIT_INTERCEPT,
    "intercept_scaling": numbers(0, MAX_REGULARISATION, low_open=True),
    "class_weight": choice("balanced", nullable=True),
    "random_state": RANDOM_STATE,
    "solver": choice("lbfgs", "liblinear", "newton-cg", "newton-cholesky", "sag", "saga"),
    "max_iter": ints(1, MAX_ITER),
    "verbose": PLATFORM_VERBOSE,
    "warm_start": BOOL,
    "n_jobs": PLATFORM_N_JOBS,
}
RIDGE: dict[str, Param] = {
    "alpha": NON_NEGATIVE,
    "fit_intercept": FIT_INTERCEPT,
    "copy_X": BOOL,
    "max_iter": ints(1, MAX_ITER, nullable=True),
    "tol": TOL,
    "solver": choice("auto", "svd", "cholesky", "lsqr", "sparse_cg", "sag", "saga", "lbfgs"),
    "positive": BOOL,
    "random_state": RANDOM_STATE,
}
LINEAR_REGRESSION: dict[str, Param] = {
    "fit_intercept": FIT_INTERCEPT,
    "copy_X": BOOL,
    "tol": TOL,
    "n_jobs": PLATFORM_N_JOBS,
    "positive": BOOL,
}
RANDOM_FOREST_CLASSIFIER = _forest(
    ("gini", "entropy", "log_loss"), ("balanced", "balanced_subsample")
)
RANDOM_FOREST_REGRESSOR = _forest(("squared_error", "absolute_error", "poisson"), None)
GRADIENT_BOOSTING_CLASSIFIER = _gradient_boosting(("log_loss", "exponential"), regression=False)
GRADIENT_BOOSTING_REGRESSOR = _gradient_boosting(
    ("squared_error", "absolute_error", "huber", "quantile"), regression=True
)
HIST_GRADIENT_BOOSTING_CLASSIFIER = _hist_gradient_boosting(
    ("log_loss",), CLASSIFICATION_SCORINGS, regression=False
)
HIST_GRADIENT_BOOSTING_REGRESSOR = _hist_gradient_boosting(
    ("squared_error", "absolute_error", "gamma", "poisson", "quantile"),
    REGRESSION_SCORINGS,
    regression=True,
)
