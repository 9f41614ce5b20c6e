"""Map building, as the EFAAR framework defines it: center-scale on controls, PCA, TVN, aggregation.

The input is a table with one row per replicate unit (site or well): metadata columns and feature columns
(by default the columns named `feature_*`, as `maefast embed` and the RxRx3 releases write them).

- center-scale on controls: per batch, subtract the mean and divide by the standard deviation (ddof 0)
  of that batch's control rows (EFAAR `centerscale_on_controls` with a batch column). A batch is a value of
  one metadata column or a combination of several (experiment and plate: RxRx plate numbers repeat in every
  experiment, so plate alone would merge plate 1 of every experiment, which a warning says).
- PCA: fit on all rows, keep `pca_components` (EFAAR `embed_by_pca` fits on all rows as well), clipped, with a
  warning, to what the data allows: the rows, the features, and for TVN one less than the control rows.
- TVN (typical variation normalization, EFAAR `tvn_on_controls`): center-scale on all controls, rotate by
  a PCA fit on the controls (all components), center-scale on all controls again, then per batch multiply
  by (cov(batch controls, ddof 1) + 0.5 I)^(-1/2).
- aggregation: mean or median per perturbation; control rows are left out of the map by default.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from maefast.errors import UserInputError
from maefast.tables import feature_columns, feature_names, metadata_column

TVN_REGULARIZATION = 0.5  # EFAAR adds 0.5 I to each batch's control covariance before whitening
AGGREGATIONS = ("mean", "median")
# columns that name an experiment: a plate number means a plate only together with one of them
EXPERIMENT_COLUMNS = ("batch", "experiment")


def _require_column(table: pd.DataFrame, column: str, role: str) -> str:
    """The column `column` names (with or without pycytominer's Metadata_ prefix: tables.metadata_column)."""
    try:
        return metadata_column(table, column)
    except UserInputError:
        raise UserInputError(f"unknown {role} column {column!r}; expected one of {list(table.columns)}") from None


def control_mask(table: pd.DataFrame, perturbation_col: str, control_label: str | Sequence[str]) -> np.ndarray:
    """Boolean mask of the control rows (perturbation equal to the label, or to any of the labels)."""
    perturbation_col = _require_column(table, perturbation_col, "perturbation")
    labels = [control_label] if isinstance(control_label, str) else list(control_label)
    mask = table[perturbation_col].isin(labels).to_numpy()
    if not mask.any():
        seen = list(pd.unique(table[perturbation_col]))[:10]
        raise UserInputError(f"no control rows: no {perturbation_col!r} equal to {labels}; values include {seen}")
    return mask


def _batch_ids(table: pd.DataFrame, batch_col: str | Sequence[str] | None) -> tuple[np.ndarray, list]:
    """Integer batch id per row and the batch names (a value, or a tuple of values of several batch columns;
    all rows form one batch when batch_col is None or empty)."""
    requested = [batch_col] if isinstance(batch_col, str) else list(batch_col or [])
    if not requested:
        return np.zeros(len(table), dtype=np.int64), ["all rows"]
    columns = [_require_column(table, column, "batch") for column in requested]
    for column in columns:
        if table[column].isna().any():
            raise UserInputError(f"batch column {column!r} has {int(table[column].isna().sum())} missing values")
    warn_if_batches_merge_experiments(table, columns)
    if len(columns) == 1:
        codes, names = pd.factorize(table[columns[0]], sort=True)
        return codes, list(names)
    codes, names = pd.factorize(pd.MultiIndex.from_frame(table[columns]), sort=True)
    return codes, list(names)


def warn_if_batches_merge_experiments(table: pd.DataFrame, columns: list[str]) -> None:
    """A warning when one batch column's values repeat across the experiments of an experiment column the batches
    leave out (RxRx plate numbers start at 1 in every experiment): such batches merge plates of different
    experiments."""
    if len(columns) != 1:
        return
    column = columns[0]
    for experiment in (c for c in EXPERIMENT_COLUMNS if c in table.columns and c != column):
        spread = table.groupby(column, sort=True)[experiment].nunique()
        if spread.max() > 1:
            value = spread.idxmax()
            warnings.warn(f"batch column {column!r}: {column} {value} occurs in {spread.max()} values of "
                          f"{experiment!r}, and batches by {column!r} alone merge them; to make each "
                          f"({experiment}, {column}) its own batch, pass both (maefast map --batch-col {experiment} "
                          f"--batch-col {column}; batch_col=[{experiment!r}, {column!r}])", stacklevel=4)
            return


def _batch_controls(batches: np.ndarray, controls: np.ndarray, batch: int, names, minimum: int, step: str):
    rows = batches == batch
    count = int(np.sum(rows & controls))
    if count < minimum:
        raise UserInputError(f"batch {names[batch]!r} has {count} control rows; {step} needs at least {minimum} "
                             f"per batch")
    return rows


def centerscale_on_controls(x: np.ndarray, controls: np.ndarray, batches: np.ndarray | None = None,
                            batch_names: Sequence | None = None) -> np.ndarray:
    """Per batch, (x - mean of batch controls) / std of batch controls (ddof 0; a zero std counts as 1)."""
    batches = np.zeros(len(x), np.int64) if batches is None else batches
    names = batch_names if batch_names is not None else np.unique(batches)
    out = np.empty_like(x, dtype=np.float64)
    for batch in np.unique(batches):
        rows = _batch_controls(batches, controls, batch, names, 1, "center-scaling on controls")
        reference = x[rows & controls]
        mean, std = reference.mean(axis=0), reference.std(axis=0)
        std[std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)] = 1.0
        out[rows] = (x[rows] - mean) / std
    return out


def fit_pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Principal axes of the rows of x: (mean (D,), components (K, D)), by eigendecomposition of the
    covariance, largest variance first; each axis is signed so that its largest-magnitude loading is
    positive. The same subspace and scores as a full-SVD PCA (e.g. scikit-learn's) up to axis signs."""
    n, d = x.shape
    if not 1 <= n_components <= min(n, d):
        raise UserInputError(f"pca_components={n_components} must lie in [1, min(rows, features)] = [1, {min(n, d)}]")
    mean = x.mean(axis=0)
    centered = x - mean
    values, vectors = np.linalg.eigh(centered.T @ centered)
    components = vectors[:, ::-1][:, :n_components].T
    signs = np.sign(components[np.arange(n_components), np.argmax(np.abs(components), axis=1)])
    return mean, components * signs[:, None]


def allowed_components(requested: int, shape: tuple[int, int], control_rows: int, tvn: bool) -> int:
    """`requested` PCA components, or (with a warning) the most the data allows: no more than the rows and the
    features, and with TVN fewer than the control rows (its whitening fits a PCA on them with every component)."""
    rows, features = shape
    limits = {"rows": rows, "features": features}
    if tvn:
        limits["control rows, less one (TVN)"] = control_rows - 1
    allowed = min(limits.values())
    described = ", ".join(f"{limit} {name}" for name, limit in limits.items())
    if requested <= allowed:
        return requested
    if allowed < 1:
        raise UserInputError(f"pca_components={requested}: this data allows no PCA component ({described})")
    warnings.warn(f"pca_components={requested} is more than this data allows ({described}); using {allowed}",
                  stacklevel=3)
    return allowed


def pca_transform(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    return (x - mean) @ components.T


def inverse_sqrt(matrix: np.ndarray) -> np.ndarray:
    """matrix^(-1/2) of a symmetric positive definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors / np.sqrt(values)) @ vectors.T


def tvn_on_controls(x: np.ndarray, controls: np.ndarray, batches: np.ndarray | None = None,
                    batch_names: Sequence | None = None) -> np.ndarray:
    """Typical variation normalization on the control rows (see the module docstring)."""
    n_controls, d = int(controls.sum()), x.shape[1]
    if n_controls <= d:
        raise UserInputError(f"TVN needs more control rows ({n_controls}) than feature dimensions ({d}); "
                             "lower pca_components or turn TVN off")
    x = centerscale_on_controls(x, controls)
    x = pca_transform(x, *fit_pca(x[controls], d))
    x = centerscale_on_controls(x, controls)
    batches = np.zeros(len(x), np.int64) if batches is None else batches
    names = batch_names if batch_names is not None else np.unique(batches)
    for batch in np.unique(batches):
        rows = _batch_controls(batches, controls, batch, names, 2, "TVN")
        covariance = np.cov(x[rows & controls], rowvar=False, ddof=1) + TVN_REGULARIZATION * np.eye(d)
        x[rows] = x[rows] @ inverse_sqrt(covariance)
    return x


def normalize_embeddings(
    table: pd.DataFrame,
    *,
    perturbation_col: str,
    control_label: str | Sequence[str],
    batch_col: str | Sequence[str] | None = None,
    feature_cols: Sequence[str] | None = None,
    pca_components: int | None = 128,
    tvn: bool = True,
) -> pd.DataFrame:
    """Center-scale on controls (per batch), PCA (None: skip), TVN on controls (per batch).

    batch_col: a metadata column, or several whose combination is the batch (["experiment", "plate"]).
    pca_components larger than the data allows are clipped to what it allows, with a warning (the module
    docstring). Returns the metadata columns of `table` (same row order) followed by the K features
    (maefast.tables.feature_names); the table's other `feature_*` columns (those feature_cols leaves out) are left
    out.
    """
    columns = feature_columns(table, names=feature_cols)
    controls = control_mask(table, perturbation_col, control_label)
    perturbation_col = _require_column(table, perturbation_col, "perturbation")
    if table[perturbation_col].isna().any():
        missing = int(table[perturbation_col].isna().sum())
        raise UserInputError(f"perturbation column {perturbation_col!r} has {missing} "
                             "missing values")
    batches, names = _batch_ids(table, batch_col)
    x = table[columns].to_numpy(dtype=np.float64)
    if not np.isfinite(x).all():
        raise UserInputError(f"feature columns have {int(np.sum(~np.isfinite(x)))} NaN or infinite values")

    x = centerscale_on_controls(x, controls, batches, names)
    if pca_components:
        x = pca_transform(x, *fit_pca(x, allowed_components(pca_components, x.shape, int(controls.sum()), tvn)))
    if tvn:
        x = tvn_on_controls(x, controls, batches, names)

    # feature columns left out of feature_cols are left out of the result too: they are not metadata, and they
    # would mix with the normalized features, which have the same names
    dropped = list(dict.fromkeys([*columns, *feature_columns(table, required=False)]))
    metadata = table.drop(columns=dropped).reset_index(drop=True)
    features = pd.DataFrame(x, columns=feature_names(x.shape[1]))
    return pd.concat([metadata, features], axis=1)


def aggregate_map(
    table: pd.DataFrame,
    *,
    perturbation_col: str,
    feature_cols: Sequence[str] | None = None,
    method: str = "mean",
    drop_labels: Sequence[str] = (),
) -> pd.DataFrame:
    """Mean or median of the feature columns per perturbation, without the rows labelled `drop_labels`.

    Returns a DataFrame indexed by perturbation (index name `perturbation_col`), sorted by name.
    """
    if method not in AGGREGATIONS:
        raise UserInputError(f"unknown aggregation {method!r}; expected one of {AGGREGATIONS}")
    perturbation_col = _require_column(table, perturbation_col, "perturbation")
    columns = feature_columns(table, names=feature_cols)
    kept = table[~table[perturbation_col].isin(list(drop_labels))]
    if kept.empty:
        raise UserInputError(f"no rows left to aggregate after dropping {list(drop_labels)}")
    return getattr(kept[columns].groupby(kept[perturbation_col], sort=True), method)()


def build_map(
    table: pd.DataFrame,
    *,
    perturbation_col: str,
    control_label: str | Sequence[str],
    batch_col: str | Sequence[str] | None = None,
    feature_cols: Sequence[str] | None = None,
    pca_components: int | None = 128,
    tvn: bool = True,
    aggregate: str = "mean",
    keep_controls: bool = False,
) -> pd.DataFrame:
    """The map: `normalize_embeddings` then `aggregate_map` per perturbation (controls left out unless
    `keep_controls`). Returns a DataFrame indexed by perturbation with the K feature columns
    (maefast.tables.feature_names), ready for `relationship_recall`."""
    if aggregate not in AGGREGATIONS:
        raise UserInputError(f"unknown aggregation {aggregate!r}; expected one of {AGGREGATIONS}")
    normalized = normalize_embeddings(table, perturbation_col=perturbation_col, control_label=control_label,
                                      batch_col=batch_col, feature_cols=feature_cols,
                                      pca_components=pca_components, tvn=tvn)
    labels = [control_label] if isinstance(control_label, str) else list(control_label)
    return aggregate_map(normalized, perturbation_col=perturbation_col, method=aggregate,
                         drop_labels=() if keep_controls else labels)
