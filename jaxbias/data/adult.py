"""UCI Adult income as NumPy arrays, for fast model debiasing (FMD) on tabular data (SPEC §5, §8).

The task is to predict whether a person earns more than $50K a year from 14
census fields. The protected attribute (``"sex"`` by default, or ``"race"``)
stays an *input* feature: its counterfactual is the same record with that field
set to another value (:func:`counterfactual_pairs`), which is what FMD measures
the bias with.

Reading of the file format (:func:`read_adult`):

- One record per line, 15 comma-separated fields (values usually prefixed by a
  space), the last one being the label ``<=50K`` or ``>50K``.
- Tolerated: an optional header line starting with ``age`` (the shared copy has
  one), comment lines starting with ``|`` (the first line of UCI ``adult.test``
  is ``|1x3 Cross validator``), labels with a trailing ``.`` (``adult.test``),
  blank lines anywhere (the UCI files end with one).
- ``?`` marks a missing value; in a categorical column it is kept as a category
  of its own.

Encoding (:func:`load_adult`): the columns of ``x`` follow the file's column
order; a numeric field is one column, standardised with the *training* split's
mean and (population) standard deviation (a constant column is divided by 1);
a categorical field is a one-hot block over the sorted vocabulary of the whole
file, named ``"field=value"``. The train/test split is stratified by label and
depends only on ``seed`` through ``np.random.default_rng``.
"""
from __future__ import annotations

import numbers
import os
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxbias.data.sources import DatasetUnavailableError
from jaxbias.validation import check_labels

#: The 15 fields of a record in file order: 14 features, then the income label.
ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "label",
)
#: Fields read as numbers (float64) and standardised.
NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
#: Fields read as strings and one-hot encoded.
CATEGORICAL = tuple(c for c in ADULT_COLUMNS[:-1] if c not in NUMERIC)
#: Fields that :func:`load_adult` accepts as the protected attribute.
PROTECTED = ("sex", "race")
#: The UCI training file (32,561 records, no header line).
ADULT_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/adult.data"
#: Environment variable naming a local copy of ``adult.data``.
ENV_VAR = "JAXBIAS_ADULT"

_LABELS = {"<=50K": 0, ">50K": 1}
_DEFAULT_CACHE = Path("~/.cache/jaxbias")
_DOWNLOAD_TIMEOUT_S = 60.0


class Adult(NamedTuple):
    """The Adult data, encoded and split.

    ``*_x``: ``(N, D)`` float32 features; ``*_y``: ``(N,)`` int32, 1 = income
    ``>50K``; ``*_a``: ``(N,)`` int32, the protected value of each record as an
    index into ``protected_values``. ``feature_names`` has ``D`` entries
    (``"age"``, ``"sex=Male"``, ...). ``protected`` is the protected field
    (``"sex"`` or ``"race"``), ``protected_values`` its sorted categories and
    ``protected_columns`` the columns of ``x`` holding its one-hot block, in the
    order of ``protected_values`` (so ``x[:, protected_columns[k]] == (a == k)``).
    ``source`` is the file the records were read from.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    train_a: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_a: np.ndarray
    feature_names: tuple[str, ...]
    protected: str
    protected_values: tuple[str, ...]
    protected_columns: tuple[int, ...]
    source: str


# ----------------------------------------------------------------------------- checks


def _check_path(name: str, path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{name} must be a str or os.PathLike file path, got {path!r} ({type(path).__name__})")
    if isinstance(path, str) and not path.strip():
        raise ValueError(f"{name} must be a non-empty file path, got {path!r}")
    return Path(path).expanduser()


def _check_protected(protected: Any) -> str:
    if not isinstance(protected, str) or protected not in PROTECTED:
        raise ValueError(f"protected must be one of {PROTECTED}, got {protected!r}")
    return protected


def _check_fraction(test_fraction: Any) -> float:
    if isinstance(test_fraction, (bool, np.bool_)) or not isinstance(test_fraction, numbers.Real):
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:  # also rejects NaN
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    return float(test_fraction)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be a non-negative int, got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return int(seed)


# ----------------------------------------------------------------------------- reading


def _is_header(fields: list[str]) -> bool:
    return fields[0].strip().lower() == "age"


def _check_header(fields: list[str], where: str) -> None:
    got = [f.strip().lower().replace("_", "-") for f in fields]
    if len(got) != len(ADULT_COLUMNS) or got[:-1] != list(ADULT_COLUMNS[:-1]):
        raise ValueError(
            f"{where}: header line does not name the Adult fields; expected "
            f"{', '.join(ADULT_COLUMNS[:-1])}, <label>, got {', '.join(f.strip() for f in fields)}"
        )


def read_adult(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The raw columns of an Adult file (UCI ``adult.data``/``adult.test`` format).

    Args:
      path: the file. A header line, ``|`` comment lines, blank lines and labels
        ending in ``.`` are tolerated (see the module docstring).

    Returns:
      A dict keyed by :data:`ADULT_COLUMNS`: the :data:`NUMERIC` fields as float64
      arrays, the :data:`CATEGORICAL` fields as str arrays (surrounding spaces
      stripped, ``"?"`` kept), and ``"label"`` as int32 (1 for ``>50K``). All arrays
      have one entry per record, in file order.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: a bad ``path`` argument, a line with the wrong number of fields, a
        number or label that cannot be read (the message names the file and the
        line), a header naming other fields, or a file without records.

    Example:
      >>> cols = read_adult("adult.data")
      >>> cols["age"][:2], cols["sex"][:2], cols["label"][:2]
      (array([39., 50.]), array(['Male', 'Male'], dtype='<U6'), array([0, 0], dtype=int32))
    """
    file = _check_path("path", path)
    if not file.exists():
        raise FileNotFoundError(
            f"Adult data file not found: {file}. Pass path= to a local copy of adult.data, set "
            f"{ENV_VAR}, or call load_adult(download=True) to fetch it from {ADULT_URL}"
        )
    if file.is_dir():
        raise ValueError(f"Adult data path {file} is a directory; expected the adult.data file itself")
    numeric = {c: [] for c in NUMERIC}
    categorical = {c: [] for c in CATEGORICAL}
    labels: list[int] = []
    seen_content = False
    n_fields = len(ADULT_COLUMNS)
    with open(file, encoding="utf-8") as fh:
        try:
            lines = fh.readlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"{file} is not a text file (byte {e.start} is not UTF-8): expected the "
                             "comma-separated adult.data") from None
        for lineno, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("|"):
                continue
            where = f"{file}, line {lineno}"
            fields = text.split(",")
            if not seen_content:
                seen_content = True
                if _is_header(fields):
                    _check_header(fields, where)
                    continue
            if len(fields) != n_fields:
                raise ValueError(f"{where}: expected {n_fields} comma-separated fields, got {len(fields)}")
            for name, raw in zip(ADULT_COLUMNS[:-1], fields):
                value = raw.strip()
                if name in numeric:
                    try:
                        number = float(value)
                    except ValueError:
                        number = float("nan")
                    if not np.isfinite(number):
                        raise ValueError(f"{where}: field {name!r} must be a finite number, got {value!r}")
                    numeric[name].append(number)
                else:
                    if not value:
                        raise ValueError(f"{where}: field {name!r} is empty (write '?' for a missing value)")
                    categorical[name].append(value)
            label = fields[-1].strip().rstrip(".")
            if label not in _LABELS:
                raise ValueError(f"{where}: label must be '<=50K' or '>50K' (optionally ending in '.'), got {fields[-1].strip()!r}")
            labels.append(_LABELS[label])
    if not labels:
        raise ValueError(f"{file}: no Adult records found")
    columns: dict[str, np.ndarray] = {}
    for name in ADULT_COLUMNS[:-1]:
        if name in numeric:
            columns[name] = np.asarray(numeric[name], dtype=np.float64)
        else:
            columns[name] = np.asarray(categorical[name], dtype=str)
    columns["label"] = np.asarray(labels, dtype=np.int32)
    return columns


# ----------------------------------------------------------------------------- locating


def _download(cache_dir: Path) -> Path:
    """``adult.data`` in ``cache_dir``, fetched from :data:`ADULT_URL` unless already there."""
    target = cache_dir / "adult.data"
    if target.is_file() and target.stat().st_size > 0:
        return target
    partial = target.with_name(target.name + ".part")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(ADULT_URL, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            payload = response.read()
        if not payload:
            raise OSError("the server sent an empty file")
        partial.write_bytes(payload)
        os.replace(partial, target)  # never leave a half-written adult.data behind
    except Exception as e:  # URLError, HTTPError, timeouts, disk errors, ...
        partial.unlink(missing_ok=True)
        raise DatasetUnavailableError(
            f"could not download the Adult data from {ADULT_URL} into {target}: {type(e).__name__}: {e}. "
            f"Pass path= to a local copy of adult.data or set {ENV_VAR}"
        ) from e
    return target


def _resolve(path: Any, *, download: bool, cache_dir: Any) -> Path:
    if path is not None:
        return _check_path("path", path)
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    if download:
        return _download(_check_path("cache_dir", cache_dir) if cache_dir is not None else _DEFAULT_CACHE.expanduser())
    raise DatasetUnavailableError(
        "no Adult data file given: pass path= (--data-path) to a local copy of adult.data, set the environment variable "
        f"{ENV_VAR} to one, or call load_adult(download=True) to fetch {ADULT_URL} "
        "(cached under cache_dir, default ~/.cache/jaxbias)"
    )


# ----------------------------------------------------------------------------- encoding


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if idx.shape[0] == 0:
            continue
        n_test = int(round(idx.shape[0] * test_fraction))
        if n_test == 0 or n_test == idx.shape[0]:
            raise ValueError(
                f"test_fraction={test_fraction} leaves label {c} ({idx.shape[0]} records) "
                "without a train or a test record"
            )
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def load_adult(
    path: str | os.PathLike | None = None,
    *,
    protected: str = "sex",
    test_fraction: float = 0.2,
    seed: int = 0,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Adult:
    """Read, encode and split the Adult data.

    Args:
      path: an Adult file (see :func:`read_adult`). ``None``: the file named by the
        environment variable ``JAXBIAS_ADULT``; if that is unset, :data:`ADULT_URL`
        downloaded into ``cache_dir`` when ``download`` is true.
      protected: the protected field, ``"sex"`` or ``"race"``. It stays an input
        feature.
      test_fraction: share of each label held out as the test split, in ``(0, 1)``.
      seed: non-negative int; the split depends on nothing else.
      download: allow fetching :data:`ADULT_URL` (only when ``path`` is ``None`` and
        ``JAXBIAS_ADULT`` is unset). A file already in ``cache_dir`` is reused.
      cache_dir: where the download goes; ``None`` for ``~/.cache/jaxbias``.

    Returns:
      An :class:`Adult`. Numeric columns are standardised with the training split's
      mean and standard deviation (a zero deviation counts as 1); categorical fields
      are one-hot over the sorted vocabulary of the whole file (``"?"`` included).

    Raises:
      ValueError: a bad argument, a malformed file, or a protected field with a
        single value in the file.
      FileNotFoundError: the file does not exist.
      DatasetUnavailableError: no file was given, or the download failed.

    Example:
      >>> data = load_adult("adult.data", protected="sex", seed=0)
      >>> data.train_x.shape, data.protected_values
      ((26049, 108), ('Female', 'Male'))
    """
    protected = _check_protected(protected)
    test_fraction = _check_fraction(test_fraction)
    seed = _check_seed(seed)
    if not isinstance(download, (bool, np.bool_)):
        raise ValueError(f"download must be a bool, got {download!r} ({type(download).__name__})")
    if cache_dir is not None:
        _check_path("cache_dir", cache_dir)
    file = _resolve(path, download=bool(download), cache_dir=cache_dir)
    columns = read_adult(file)
    labels = columns["label"]
    try:
        train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
    except ValueError as e:
        raise ValueError(f"{file} holds only {labels.shape[0]} records: {e}") from None

    n = labels.shape[0]
    blocks: list[np.ndarray] = []
    names: list[str] = []
    protected_values: tuple[str, ...] = ()
    protected_columns: tuple[int, ...] = ()
    a = np.zeros(n, dtype=np.int32)
    for field in ADULT_COLUMNS[:-1]:
        values = columns[field]
        if field in NUMERIC:
            train_values = values[train_idx]
            mean = train_values.mean()
            std = train_values.std()
            if std == 0.0:
                std = 1.0
            blocks.append(((values - mean) / std)[:, None])
            names.append(field)
            continue
        vocab, codes = np.unique(values, return_inverse=True)  # sorted vocabulary
        codes = codes.reshape(-1)
        onehot = np.zeros((n, vocab.shape[0]), dtype=np.float64)
        onehot[np.arange(n), codes] = 1.0
        if field == protected:
            if vocab.shape[0] < 2:
                raise ValueError(
                    f"{file}: the protected field {field!r} takes the single value {vocab[0]!r}; "
                    "a counterfactual needs at least two"
                )
            start = len(names)
            protected_values = tuple(str(v) for v in vocab)
            protected_columns = tuple(range(start, start + vocab.shape[0]))
            a = codes.astype(np.int32)
        blocks.append(onehot)
        names.extend(f"{field}={v}" for v in vocab)
    x = np.concatenate(blocks, axis=1).astype(np.float32)
    y = labels.astype(np.int32)
    return Adult(
        train_x=x[train_idx],
        train_y=y[train_idx],
        train_a=a[train_idx],
        test_x=x[test_idx],
        test_y=y[test_idx],
        test_a=a[test_idx],
        feature_names=tuple(names),
        protected=protected,
        protected_values=protected_values,
        protected_columns=protected_columns,
        source=str(file),
    )


# ----------------------------------------------------------------------------- counterfactuals


def _check_protected_columns(protected_columns: Any, num_features: int) -> np.ndarray:
    if isinstance(protected_columns, (str, bytes)) or np.ndim(protected_columns) != 1:
        raise ValueError(
            f"protected_columns must be a 1-D sequence of column indices of x, got {protected_columns!r}"
        )
    items = list(protected_columns)
    for c in items:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Integral):
            raise ValueError(f"protected_columns must hold ints, got {c!r} ({type(c).__name__}) in {items!r}")
    cols = np.asarray(items, dtype=np.int64)
    if cols.shape[0] < 2:
        raise ValueError(f"protected_columns must name at least 2 columns (one per protected value), got {items!r}")
    if cols.min() < 0 or cols.max() >= num_features:
        raise ValueError(f"protected_columns must be column indices in [0, {num_features - 1}], got {items!r}")
    if np.unique(cols).shape[0] != cols.shape[0]:
        raise ValueError(f"protected_columns must be distinct, got {items!r}")
    return cols


def counterfactual_pairs(
    x: Any, y: Any, a: Any, *, protected_columns: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each record next to its counterfactual for every other protected value.

    Record ``i`` with protected value ``a[i]`` out of ``K`` yields ``K − 1`` pairs,
    one per value ``v ≠ a[i]`` in increasing order: the original row and the same
    row with its protected one-hot block set to ``v``. Only the protected columns
    differ. For a binary attribute (``sex``) this is the flip, ``N`` pairs; for
    ``race`` (``K = 5``) ``4·N`` pairs, grouped by record.

    Args:
      x: ``(N, D)`` features (e.g. ``Adult.train_x``).
      y: ``(N,)`` integer labels.
      a: ``(N,)`` protected values, indices in ``[0, K)``.
      protected_columns: the ``K`` columns of ``x`` holding the protected one-hot
        block in the order of the values (``Adult.protected_columns``);
        ``x[:, protected_columns]`` must equal the one-hot of ``a``.

    Returns:
      ``(x_rep, x_cf, y_rep, a_rep, a_cf)``: ``(M, D)`` originals and
      counterfactuals with ``x``'s dtype, ``(M,)`` labels with ``y``'s dtype, and
      ``(M,)`` int32 original and counterfactual protected values, ``M = N·(K − 1)``.

    Raises:
      ValueError: wrong shapes or dtypes, ``a`` out of range, bad
        ``protected_columns``, or a protected block that is not the one-hot of ``a``.

    Example:
      >>> x_rep, x_cf, y_rep, a_rep, a_cf = counterfactual_pairs(
      ...     d.train_x, d.train_y, d.train_a, protected_columns=d.protected_columns)
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (N, D) feature array, got shape {x.shape}")
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"x must have a real (float or int) dtype, got {x.dtype}")
    n, d = x.shape
    cols = _check_protected_columns(protected_columns, d)
    k = cols.shape[0]
    y = check_labels("y", y, n=n, against="x")
    a = check_labels("a", a, n=n, against="x", num_classes=k)
    block = x[:, cols]
    expected = np.eye(k, dtype=x.dtype)[a]
    mismatch = np.flatnonzero(np.any(block != expected, axis=1))
    if mismatch.size:
        i = int(mismatch[0])
        raise ValueError(
            f"x[:, protected_columns] must be the one-hot encoding of a; row {i} has {block[i].tolist()} "
            f"but a[{i}] = {int(a[i])} ({mismatch.size} of {n} rows differ)"
        )
    # Value j of the K − 1 others of a record with value a_i is j, or j + 1 once j reaches a_i.
    others = np.arange(k - 1)[None, :]
    a_cf = (others + (others >= a[:, None])).reshape(-1).astype(np.int32)
    rep = np.repeat(np.arange(n), k - 1)
    x_rep = x[rep]
    x_cf = x_rep.copy()
    x_cf[:, cols] = np.eye(k, dtype=x.dtype)[a_cf]
    return x_rep, x_cf, y[rep], a[rep].astype(np.int32), a_cf
