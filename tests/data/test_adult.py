"""UCI Adult loader: parsing, encoding and split against plain Python/NumPy recomputations."""
import csv
import io
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from jaxbias.data import (
    ADULT_COLUMNS,
    ADULT_URL,
    CATEGORICAL,
    NUMERIC,
    PROTECTED,
    Adult,
    DatasetUnavailableError,
    counterfactual_pairs,
    load_adult,
    read_adult,
)

# The shared data folder sits beside the repository root: <root>/../shared/data/adult.data.
REAL_FILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "adult.data"

# Field order of the UCI file, written out independently of the module.
FIELDS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
]
NUMERIC_FIELDS = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
# Small vocabularies for the synthetic file; "?" is a missing value and its own category.
VOCAB = {
    "workclass": ["Private", "Self-emp-inc", "State-gov", "?"],
    "education": ["Bachelors", "HS-grad", "Masters"],
    "marital-status": ["Married-civ-spouse", "Never-married"],
    "occupation": ["Adm-clerical", "Sales", "Tech-support", "?"],
    "relationship": ["Husband", "Not-in-family", "Wife"],
    "race": ["White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"],
    "sex": ["Male", "Female"],
    "native-country": ["United-States", "Mexico", "?"],
}
HEADER = ("age, workclass, fnlwgt, education, education-num, marital-status, occupation, relationship, "
          "race, sex, capital-gain, capital-loss, hours-per-week, native-country, Salary")
N_SYNTH, N_POS = 83, 29


def _records(n=N_SYNTH, n_pos=N_POS, seed=0):
    """Random records as dicts; every vocabulary value occurs; fnlwgt is distinct per record."""
    rng = np.random.default_rng(seed)
    recs = [{} for _ in range(n)]
    for field, vocab in VOCAB.items():
        values = [vocab[i % len(vocab)] for i in rng.permutation(n)]
        for r, v in zip(recs, values):
            r[field] = v
    fnlwgt = 12345 + 101 * rng.permutation(n)
    labels = rng.permutation(np.arange(n) < n_pos)
    for i, r in enumerate(recs):
        r["age"] = int(rng.integers(17, 91))
        r["fnlwgt"] = int(fnlwgt[i])
        r["education-num"] = int(rng.integers(1, 17))
        r["capital-gain"] = int(rng.choice([0, 0, 0, 2174, 15024]))
        r["capital-loss"] = 0  # constant: its standard deviation is 0
        r["hours-per-week"] = int(rng.integers(1, 100))
        r["label"] = int(labels[i])
    return recs


def _line(rec, test_style=False):
    label = ">50K" if rec["label"] else "<=50K"
    if test_style:
        label += "."
    return ", ".join([str(rec[f]) for f in FIELDS] + [label])


def _write(path, recs, *, header=False, test_style=False):
    lines = []
    if test_style:
        lines.append("|1x3 Cross validator")
    if header:
        lines.append(HEADER)
    lines += [_line(r, test_style) for r in recs]
    path.write_text("\n".join(lines) + "\n\n\n")
    return path


@pytest.fixture
def synth(tmp_path):
    recs = _records()
    return recs, _write(tmp_path / "adult.data", recs, header=True)


def _record_of_rows(data, recs):
    """Which record each row of concat(train_x, test_x) is, from the rank of its fnlwgt."""
    j = data.feature_names.index("fnlwgt")
    col = np.concatenate([data.train_x[:, j], data.test_x[:, j]])
    raw = np.array([r["fnlwgt"] for r in recs])
    # Standardising is increasing, so ranks of the encoded column are ranks of the raw one.
    rec = np.empty(len(recs), dtype=np.int64)
    rec[np.argsort(col, kind="stable")] = np.argsort(raw, kind="stable")
    return rec[: data.train_x.shape[0]], rec[data.train_x.shape[0]:]


# ----------------------------------------------------------------------------- constants


def test_constants():
    assert ADULT_COLUMNS[:-1] == tuple(FIELDS) and len(ADULT_COLUMNS) == 15
    assert NUMERIC == tuple(NUMERIC_FIELDS)
    assert CATEGORICAL == tuple(f for f in FIELDS if f not in NUMERIC_FIELDS) and len(CATEGORICAL) == 8
    assert PROTECTED == ("sex", "race")
    assert ADULT_URL == "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/adult.data"


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("header,test_style", [(False, False), (True, False), (False, True), (True, True)])
def test_read_adult_formats(tmp_path, header, test_style):
    recs = _records()
    cols = read_adult(_write(tmp_path / "a.txt", recs, header=header, test_style=test_style))
    assert set(cols) == set(ADULT_COLUMNS)
    for f in NUMERIC_FIELDS:
        assert cols[f].dtype == np.float64
        np.testing.assert_array_equal(cols[f], [float(r[f]) for r in recs])
    for f in VOCAB:
        assert cols[f].dtype.kind == "U"
        assert cols[f].tolist() == [r[f] for r in recs]  # no leading spaces, "?" kept
    assert cols["label"].dtype == np.int32
    np.testing.assert_array_equal(cols["label"], [r["label"] for r in recs])
    assert "?" in cols["workclass"].tolist()


def test_read_adult_blank_lines_inside(tmp_path):
    recs = _records(n=6, n_pos=2)
    lines = [_line(r) for r in recs]
    text = "\n".join(lines[:3]) + "\n\n   \n" + "\n".join(lines[3:]) + "\n"
    (tmp_path / "x").write_text(text)
    cols = read_adult(tmp_path / "x")
    assert cols["age"].tolist() == [float(r["age"]) for r in recs]


# ----------------------------------------------------------------------------- encoding and split


@pytest.mark.parametrize("protected", ["sex", "race"])
def test_encoding_matches_direct_computation(synth, protected):
    recs, path = synth
    data = load_adult(path, protected=protected, test_fraction=0.25, seed=3)
    assert isinstance(data, Adult) and data.source == str(path) and data.protected == protected
    n_tr, n_te = data.train_x.shape[0], data.test_x.shape[0]
    assert n_tr + n_te == len(recs)
    for arr, dt in [(data.train_x, np.float32), (data.test_x, np.float32), (data.train_y, np.int32),
                    (data.test_y, np.int32), (data.train_a, np.int32), (data.test_a, np.int32)]:
        assert arr.dtype == dt
    vocab = {f: sorted({r[f] for r in recs}) for f in VOCAB}
    d = len(NUMERIC_FIELDS) + sum(len(v) for v in vocab.values())
    assert data.train_x.shape == (n_tr, d) and data.test_x.shape == (n_te, d)
    # Names follow the file's field order; categorical blocks in sorted order.
    expected_names = []
    for f in FIELDS:
        expected_names += [f] if f in NUMERIC_FIELDS else [f"{f}={v}" for v in vocab[f]]
    assert data.feature_names == tuple(expected_names)

    tr, te = _record_of_rows(data, recs)
    assert sorted(tr.tolist() + te.tolist()) == list(range(len(recs)))
    for f in NUMERIC_FIELDS:
        j = data.feature_names.index(f)
        raw = np.array([r[f] for r in recs], dtype=np.float64)
        mu, sd = raw[tr].mean(), raw[tr].std()
        sd = sd if sd > 0 else 1.0
        np.testing.assert_allclose(data.train_x[:, j], (raw[tr] - mu) / sd, atol=1e-5)
        np.testing.assert_allclose(data.test_x[:, j], (raw[te] - mu) / sd, atol=1e-5)
        assert abs(data.train_x[:, j].mean()) < 1e-5
        if raw[tr].std() > 0:
            assert data.train_x[:, j].std() == pytest.approx(1.0, abs=1e-5)
        else:
            assert f == "capital-loss" and np.all(data.train_x[:, j] == 0)
    for x, rows in [(data.train_x, tr), (data.test_x, te)]:
        for f in VOCAB:
            block = [data.feature_names.index(f"{f}={v}") for v in vocab[f]]
            np.testing.assert_array_equal(x[:, block].sum(axis=1), 1.0)
            want = np.array([[float(recs[i][f] == v) for v in vocab[f]] for i in rows])
            np.testing.assert_array_equal(x[:, block], want)
    np.testing.assert_array_equal(data.train_y, [recs[i]["label"] for i in tr])
    np.testing.assert_array_equal(data.test_y, [recs[i]["label"] for i in te])
    # The protected attribute: sorted values, its one-hot columns, and a as an index into them.
    assert data.protected_values == tuple(vocab[protected])
    assert data.protected_columns == tuple(data.feature_names.index(f"{protected}={v}") for v in vocab[protected])
    for x, a, rows in [(data.train_x, data.train_a, tr), (data.test_x, data.test_a, te)]:
        assert [data.protected_values[k] for k in a] == [recs[i][protected] for i in rows]
        np.testing.assert_array_equal(x[:, list(data.protected_columns)], np.eye(len(vocab[protected]))[a])


def test_constant_train_column_divides_by_one(tmp_path):
    recs = _records()
    recs[0]["capital-loss"] = 1902  # the only non-zero value: constant on train when record 0 is in test
    path = _write(tmp_path / "adult.data", recs)
    for seed in range(60):
        data = load_adult(path, seed=seed)
        j = data.feature_names.index("capital-loss")
        if np.all(data.train_x[:, j] == 0):  # the train values are all 0 exactly when record 0 is in test
            assert sorted(set(data.test_x[:, j].tolist())) == [0.0, 1902.0]  # (v - 0) / 1
            return
    pytest.fail("record 0 never landed in the test split")


@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.5, 0.7])
def test_split_is_stratified(synth, fraction):
    recs, path = synth
    data = load_adult(path, test_fraction=fraction, seed=1)
    n_pos = sum(r["label"] for r in recs)
    n_neg = len(recs) - n_pos
    assert int(data.test_y.sum()) == round(n_pos * fraction)
    assert int((data.test_y == 0).sum()) == round(n_neg * fraction)
    assert int(data.train_y.sum()) == n_pos - round(n_pos * fraction)


def test_split_deterministic_per_seed(synth):
    _, path = synth
    a, b, c = load_adult(path, seed=7), load_adult(path, seed=7), load_adult(path, seed=8)
    for name in ["train_x", "train_y", "train_a", "test_x", "test_y", "test_a"]:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    j = a.feature_names.index("fnlwgt")
    # Different seeds put different records in the test split (compare by the raw fnlwgt rank).
    recs = _records()
    assert set(_record_of_rows(a, recs)[1].tolist()) != set(_record_of_rows(c, recs)[1].tolist())
    assert a.train_x[:, j].tolist() != c.train_x[:, j].tolist()


def test_env_var_and_parse_variants_give_same_data(tmp_path, monkeypatch):
    recs = _records()
    plain = _write(tmp_path / "plain", recs)
    test_like = _write(tmp_path / "adult.test", recs, header=True, test_style=True)
    a = load_adult(plain, seed=2)
    b = load_adult(test_like, seed=2)
    monkeypatch.setenv("JAXBIAS_ADULT", str(plain))
    c = load_adult(seed=2)
    assert c.source == str(plain)
    for other in (b, c):
        for name in ["train_x", "train_y", "train_a", "test_x", "test_y", "test_a"]:
            np.testing.assert_array_equal(getattr(a, name), getattr(other, name))
        assert a.feature_names == other.feature_names


# ----------------------------------------------------------------------------- download


def test_download_into_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXBIAS_ADULT", raising=False)
    recs = _records()
    payload = ("\n".join(_line(r) for r in recs) + "\n").encode()
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    data = load_adult(download=True, cache_dir=tmp_path / "cache")
    assert calls == [ADULT_URL]
    assert (tmp_path / "cache" / "adult.data").read_bytes() == payload
    assert data.train_x.shape[0] + data.test_x.shape[0] == len(recs)
    load_adult(download=True, cache_dir=tmp_path / "cache")  # cached: no second fetch
    assert calls == [ADULT_URL]


def test_download_failure_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXBIAS_ADULT", raising=False)

    def offline(url, timeout=None):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetUnavailableError, match="no network here"):
        load_adult(download=True, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "adult.data").exists()


# ----------------------------------------------------------------------------- bad input


def test_wrong_field_count_names_line(tmp_path):
    recs = _records(n=10, n_pos=3)
    lines = [HEADER] + [_line(r) for r in recs]
    lines[5] = lines[5].rsplit(",", 1)[0]  # 14 fields on line 6 of the file
    path = tmp_path / "broken.data"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"broken\.data.*line 6\b"):
        read_adult(path)
    with pytest.raises(ValueError, match=r"line 6\b"):
        load_adult(path)


@pytest.mark.parametrize(
    "bad,line",
    [
        (lambda s: s.replace("<=50K", "<=50K?", 1) if "<=50K" in s else s.replace(">50K", "maybe", 1), 3),
        (lambda s: "?," + s.split(",", 1)[1], 3),  # missing numeric value
    ],
)
def test_bad_values_name_line(tmp_path, bad, line):
    recs = _records(n=5, n_pos=2)
    lines = ["", "|1x3 Cross validator"] + [_line(r) for r in recs]
    lines[2] = bad(lines[2])
    path = tmp_path / "bad.data"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"line {line}\b"):
        read_adult(path)


def test_header_with_other_fields(tmp_path):
    recs = _records(n=5, n_pos=2)
    path = tmp_path / "h.data"
    path.write_text(HEADER.replace("fnlwgt", "weight") + "\n" + _line(recs[0]) + "\n")
    with pytest.raises(ValueError, match="header"):
        read_adult(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.data"
    path.write_text(HEADER + "\n\n")
    with pytest.raises(ValueError, match="no Adult records"):
        read_adult(path)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"protected": "age"}, "protected"),
        ({"protected": "Sex"}, "protected"),
        ({"test_fraction": 0}, "test_fraction"),
        ({"test_fraction": 1}, "test_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"test_fraction": float("nan")}, "test_fraction"),
        ({"test_fraction": True}, "test_fraction"),
        ({"test_fraction": 0.001}, "test_fraction"),  # no test record for a label
        ({"seed": -1}, "seed"),
        ({"seed": 1.0}, "seed"),
        ({"seed": True}, "seed"),
        ({"download": "yes"}, "download"),
    ],
)
def test_bad_arguments(synth, kwargs, match):
    _, path = synth
    with pytest.raises(ValueError, match=match):
        load_adult(path, **kwargs)


def test_single_protected_value(tmp_path):
    recs = _records()
    for r in recs:
        r["sex"] = "Male"
    path = _write(tmp_path / "men.data", recs)
    with pytest.raises(ValueError, match="single value"):
        load_adult(path, protected="sex")
    assert load_adult(path, protected="race").protected_values[0] == "Amer-Indian-Eskimo"


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "adult.data"
    with pytest.raises(FileNotFoundError, match="download=True") as err:
        load_adult(missing)
    assert "path=" in str(err.value)
    with pytest.raises(FileNotFoundError):
        read_adult(missing)
    with pytest.raises(ValueError, match="path"):
        read_adult(3)


def test_no_path_no_env(monkeypatch):
    monkeypatch.delenv("JAXBIAS_ADULT", raising=False)
    with pytest.raises(DatasetUnavailableError, match="JAXBIAS_ADULT") as err:
        load_adult()
    assert "download=True" in str(err.value) and "path=" in str(err.value)


# ----------------------------------------------------------------------------- counterfactual pairs


def test_sex_flip(synth):
    _, path = synth
    data = load_adult(path, protected="sex")
    x, y, a = data.train_x, data.train_y, data.train_a
    x_rep, x_cf, y_rep, a_rep, a_cf = counterfactual_pairs(x, y, a, protected_columns=data.protected_columns)
    n = x.shape[0]
    assert x_rep.shape == x_cf.shape == x.shape and x_cf.dtype == x.dtype
    np.testing.assert_array_equal(x_rep, x)
    np.testing.assert_array_equal(y_rep, y)
    np.testing.assert_array_equal(a_rep, a)
    np.testing.assert_array_equal(a_cf, 1 - a)
    f, m = data.protected_columns
    np.testing.assert_array_equal(x_cf[:, f], x[:, m])
    np.testing.assert_array_equal(x_cf[:, m], x[:, f])
    others = [j for j in range(x.shape[1]) if j not in (f, m)]
    np.testing.assert_array_equal(x_cf[:, others], x[:, others])
    assert np.count_nonzero(x_cf != x) == 2 * n  # exactly the two sex columns of every row


def _check_all_other_values(x, y, a, cols, k):
    x_rep, x_cf, y_rep, a_rep, a_cf = counterfactual_pairs(x, y, a, protected_columns=cols)
    n = x.shape[0]
    assert x_rep.shape == x_cf.shape == (n * (k - 1), x.shape[1])
    rec = np.repeat(np.arange(n), k - 1)  # record-major
    np.testing.assert_array_equal(x_rep, x[rec])
    np.testing.assert_array_equal(y_rep, y[rec])
    np.testing.assert_array_equal(a_rep, a[rec])
    for i in range(n):
        got = a_cf[i * (k - 1):(i + 1) * (k - 1)].tolist()
        assert got == [v for v in range(k) if v != a[i]]
    others = [j for j in range(x.shape[1]) if j not in cols]
    np.testing.assert_array_equal(x_cf[:, others], x_rep[:, others])
    np.testing.assert_array_equal(x_cf[:, list(cols)], np.eye(k)[a_cf])


def test_race_all_other_values(synth):
    _, path = synth
    data = load_adult(path, protected="race")
    assert len(data.protected_values) == 5
    _check_all_other_values(data.train_x, data.train_y, data.train_a, data.protected_columns, 5)


def test_counterfactual_bad_inputs(synth):
    _, path = synth
    data = load_adult(path, protected="sex")
    x, y, a, cols = data.train_x, data.train_y, data.train_a, data.protected_columns
    n = x.shape[0]
    age = data.feature_names.index("age")
    cases = [
        (dict(x=x, y=y, a=np.where(np.arange(n) == 0, 2, a)), "a must be class indices"),
        (dict(x=x, y=y, a=-a), "a must"),
        (dict(x=x, y=y[:-1], a=a), "y has"),
        (dict(x=x, y=y, a=a[:-1]), "a has"),
        (dict(x=x[0], y=y, a=a), "2-D"),
        (dict(x=x, y=y.astype(np.float32), a=a), "integer"),
        (dict(x=x, y=y, a=1 - a), "one-hot"),
        (dict(x=x, y=y, a=a, protected_columns=(age, cols[1])), "one-hot"),
        (dict(x=x, y=y, a=a, protected_columns=(cols[0], cols[0])), "distinct"),
        (dict(x=x, y=y, a=a, protected_columns=(cols[0], x.shape[1])), "column indices"),
        (dict(x=x, y=y, a=a, protected_columns=(cols[0], -1)), "column indices"),
        (dict(x=x, y=y, a=a, protected_columns=(cols[0],)), "at least 2"),
        (dict(x=x, y=y, a=a, protected_columns=(cols[0], 1.0 * cols[1])), "ints"),
        (dict(x=x, y=y, a=a, protected_columns=cols[0]), "1-D"),
    ]
    both = x.copy()
    both[0, list(cols)] = 1.0  # two ones in the block
    cases.append((dict(x=both, y=y, a=a), "one-hot"))
    half = x.copy()
    half[1, list(cols)] = 0.5
    cases.append((dict(x=half, y=y, a=a), "one-hot"))
    for kwargs, match in cases:
        kwargs.setdefault("protected_columns", cols)
        with pytest.raises(ValueError, match=match):
            counterfactual_pairs(kwargs["x"], kwargs["y"], kwargs["a"], protected_columns=kwargs["protected_columns"])


# ----------------------------------------------------------------------------- the real file


@pytest.fixture(scope="module")
def real_rows():
    if not REAL_FILE.is_file():
        pytest.skip(f"{REAL_FILE} is absent")
    with open(REAL_FILE, newline="") as fh:
        rows = [r for r in csv.reader(fh, skipinitialspace=True) if r]
    if rows[0][0] == "age":
        rows = rows[1:]
    return rows


def test_real_file_counts(real_rows):
    rows = real_rows
    assert len(rows) == 32561
    assert sum(r[14] == ">50K" for r in rows) == 7841
    assert sum(r[9] == "Male" for r in rows) == 21790
    data = load_adult(REAL_FILE)
    n_tr, n_te = data.train_x.shape[0], data.test_x.shape[0]
    assert n_tr + n_te == 32561
    assert int(data.train_y.sum() + data.test_y.sum()) == 7841
    assert int(data.test_y.sum()) == round(7841 * 0.2)
    assert data.protected_values == ("Female", "Male")
    male = data.protected_values.index("Male")
    assert int((data.train_a == male).sum() + (data.test_a == male).sum()) == 21790
    cat_idx = [i for i, f in enumerate(FIELDS) if f not in NUMERIC_FIELDS]
    vocab_sizes = [len({r[i] for r in rows}) for i in cat_idx]
    assert data.train_x.shape[1] == data.test_x.shape[1] == 6 + sum(vocab_sizes)
    assert np.all(np.isfinite(data.train_x)) and np.all(np.isfinite(data.test_x))
    cols = read_adult(REAL_FILE)
    assert cols["sex"].tolist() == [r[9] for r in rows]
    np.testing.assert_array_equal(cols["label"], [int(r[14] == ">50K") for r in rows])


def test_real_file_race_pairs(real_rows):
    data = load_adult(REAL_FILE, protected="race")
    races = sorted({r[8] for r in real_rows})
    assert data.protected_values == tuple(races) and len(races) == 5
    sl = slice(0, 2000)
    _check_all_other_values(data.train_x[sl], data.train_y[sl], data.train_a[sl], data.protected_columns, 5)
