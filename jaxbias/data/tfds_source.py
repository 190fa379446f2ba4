"""Any TensorFlow Datasets (TFDS) dataset by name, its image, label and bias features named by the caller, as a
random-access source.

:func:`open_tfds` opens one split through ``tfds.data_source`` (array_record files: random access, no TensorFlow
needed to read) and checks the named features against the dataset's info before any record is read:

- image: a uint8 picture ``(H, W)`` or ``(H, W, C)`` (C 1, 3 or 4; an ``Image`` or a ``Tensor`` feature);
  grey images (one channel) stay one channel, others become RGB;
- label: an int class, a ``ClassLabel`` (its ``num_classes`` is the number of classes) or an int scalar;
- bias (optional): a ``ClassLabel`` or an int / bool scalar per record;
- mask (optional): a picture ``(H, W)`` or ``(H, W, 1)``, non-zero marking artifact pixels.

Nested features are named by their path, ``attributes/Male``. Nothing is downloaded unless asked
(``download=True``); a dataset not prepared is refused in one line saying how to prepare it once:
``tfds build NAME --file_format=array_record``.

``tensorflow_datasets`` is imported on use, so ``import jaxbias.data`` stays light.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from jaxbias.data.images import to_uint8
from jaxbias.data.sources import DatasetUnavailableError, import_tfds


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def _where(data_dir: str | None) -> str:
    return repr(data_dir) if data_dir is not None else "the default TFDS data_dir (TFDS_DATA_DIR or ~/tensorflow_datasets)"


def _prepare_hint(name: str, data_dir: str | None) -> str:
    where = "" if data_dir is None else f" --data_dir={data_dir}"
    return (f"prepare it once (needs network): `tfds build {name} --file_format=array_record{where}`, or set "
            "download to true")


def feature_paths(features: Any, prefix: str = "") -> list[str]:
    """The features of a TFDS ``FeaturesDict`` by path (nested ones as ``outer/inner``)."""
    out = []
    for key in features.keys():
        feature = features[key]
        if hasattr(feature, "keys") and callable(feature.keys):
            out += feature_paths(feature, f"{prefix}{key}/")
        else:
            out.append(f"{prefix}{key}")
    return out


def _feature(features: Any, path: str, role: str, name: str) -> Any:
    node = features
    for part in path.split("/"):
        if not (hasattr(node, "keys") and part in node.keys()):
            raise ValueError(f"TFDS dataset {name!r} has no feature {path!r} (the {role} feature); its features: "
                             f"{', '.join(feature_paths(features))}")
        node = node[part]
    return node


def _describe(feature: Any) -> str:
    return f"{type(feature).__name__} ({np.dtype(feature.np_dtype).name}, shape {tuple(feature.shape)})"


def _is_int_scalar(feature: Any) -> bool:
    dtype = getattr(feature, "np_dtype", None)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return False
    return tuple(getattr(feature, "shape", (None,))) == () and (np.issubdtype(dtype, np.integer) or dtype == bool)


def _check_class(feature: Any, path: str, role: str, name: str) -> int | None:
    """The number of classes of an int-class feature (a ClassLabel's, else ``None``); other features refused."""
    if type(feature).__name__ == "ClassLabel":
        return int(feature.num_classes) if feature.num_classes else None
    if not _is_int_scalar(feature):
        raise ValueError(f"TFDS dataset {name!r} feature {path!r} ({role}) is {_describe(feature)}, not an int "
                         "class: name a ClassLabel or an int scalar feature")
    return None


def _picture(feature: Any, path: str, role: str, name: str, channels: tuple[int, ...]) -> tuple[int | None, ...]:
    """The shape of a uint8 (or, for masks, bool/int) picture feature ``(H, W)`` / ``(H, W, C)``; others refused."""
    shape = tuple(getattr(feature, "shape", ()) or ())
    try:
        dtype = np.dtype(feature.np_dtype)
    except TypeError:
        dtype = np.dtype(object)
    ok_dtype = dtype == np.uint8 if role == "image" else (dtype == bool or np.issubdtype(dtype, np.integer))
    if not (ok_dtype and len(shape) in (2, 3) and (len(shape) == 2 or shape[2] in channels)):
        want = "uint8" if role == "image" else "bool or int"
        raise ValueError(f"TFDS dataset {name!r} feature {path!r} ({role}) is {_describe(feature)}; expected a "
                         f"{want} picture (H, W) or (H, W, C) with C in {', '.join(map(str, channels))}")
    return shape


def _get(record: Any, path: str) -> Any:
    for part in path.split("/"):
        record = record[part]
    return record


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsSource:
    """Random access to one split of a TFDS dataset (build it with :func:`open_tfds`).

    ``source[i]`` reads record ``i``: ``{"image": uint8 (H, W, C), "label": int, "bias": int, "mask": bool (H, W)}``
    (``H = W = image_size`` when given, resized bilinearly; ``C`` 1 for grey images, else 3; ``bias`` and ``mask``
    only when those features are named). The open data source is not pickled: an unpickled copy re-opens the
    split on first use (what a grain ``MapDataset`` needs to wrap it).

    Attributes:
      name: the TFDS dataset name (``mnist``, ``celeb_a``, ``name/config:version``).
      split: the split read (a TFDS split expression: ``train``, ``train[:80%]``).
      data_dir: the TFDS data directory, ``None`` for TFDS's default.
      image_feature, label_feature: the features of the image and the class.
      bias_feature, mask_feature: the features of the bias label and the artifact mask, or ``None``.
      image_size: side of the square images returned, ``None`` for the dataset's own (fixed) size.
      mode: ``rgb`` or ``grey`` (from the image feature's channels).
      num_classes: the label feature's number of classes (a ClassLabel's), ``None`` when it does not say.
      splits: every split the dataset has (from its info; empty when the info does not list them).
      length: the number of records.
    """

    name: str
    split: str
    data_dir: str | None
    image_feature: str
    label_feature: str
    bias_feature: str | None
    mask_feature: str | None
    image_size: int | None
    mode: str
    num_classes: int | None
    splits: tuple[str, ...]
    length: int

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_records", None)
        return state

    def _source(self) -> Any:
        records = self.__dict__.get("_records")
        if records is None:
            records = _data_source(import_tfds(otherwise=""), self.name, self.split, self.data_dir, download=False)
            object.__setattr__(self, "_records", records)
        return records

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = self.length
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not -n <= i < n:
            raise IndexError(f"index {i!r} is outside the {n} records of TFDS dataset {self.name!r} split "
                             f"{self.split!r}")
        i = int(i) % n
        record = self._source()[i]
        where = f"TFDS dataset {self.name!r} split {self.split!r} record {i}"
        try:
            image = to_uint8(np.asarray(_get(record, self.image_feature)), self.mode, self.image_size)
        except ValueError as e:
            raise ValueError(f"{where}: the image (feature {self.image_feature!r}) cannot be read ({e})") from None
        out: dict[str, Any] = {"image": image, "label": int(_get(record, self.label_feature))}
        if self.bias_feature is not None:
            out["bias"] = int(_get(record, self.bias_feature))
        if self.mask_feature is not None:
            mask = np.asarray(_get(record, self.mask_feature))
            mask = np.where(mask.reshape(mask.shape[:2]) != 0, 255, 0).astype(np.uint8)
            out["mask"] = to_uint8(mask, "grey", self.image_size)[..., 0] > 127.5  # > 0.5 once resized
        return out


def _data_source(tfds: Any, name: str, split: str, data_dir: str | None, *, download: bool) -> Any:
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=download,
                                # a fresh build must give the random-access format data_source reads
                                builder_kwargs={"file_format": "array_record"})
    except Exception as e:  # noqa: BLE001 - tfds reports missing files, formats and network in many ways
        raise DatasetUnavailableError(f"TFDS dataset {name!r} split {split!r} cannot be read from "
                                      f"{_where(data_dir)} ({_first_line(e)}); {_prepare_hint(name, data_dir)}"
                                      ) from None


def open_tfds(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
              image_feature: str = "image", label_feature: str = "label", bias_feature: str | None = None,
              mask_feature: str | None = None, image_size: int | None = None,
              download: bool = False) -> TfdsSource:
    """Split ``split`` of the TFDS dataset ``name``, its features checked; no record read.

    Args:
      name: the TFDS name (``mnist``, ``celeb_a``, ``name/config:version``).
      split: a split or TFDS split expression (``train``, ``train[:80%]``).
      data_dir: the TFDS data directory (``None``: TFDS's default, ``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      image_feature, label_feature: the features of the image and the class (nested: ``outer/inner``).
      bias_feature, mask_feature: the optional features of the bias label and the artifact mask.
      image_size: side of the square images returned (bilinear); ``None``: the images' own size, which the
        feature must fix.
      download: download and prepare the dataset when missing (network); ``False`` never does.
    Raises:
      DatasetUnavailableError: tensorflow-datasets missing, the dataset unknown, not prepared in ``data_dir``
        or not in the array_record format (one line saying how to prepare it).
      ValueError: a feature missing (the features present listed) or of the wrong kind, an unknown split (the
        splits listed), images without a fixed size and no ``image_size``. One line.

    Example:
      >>> source = open_tfds("mnist", "test", image_size=32)  # doctest: +SKIP
      >>> source[0]["image"].shape, source.num_classes  # doctest: +SKIP
      ((32, 32, 1), 10)
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a TFDS dataset name (e.g. mnist); got {name!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                   or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None; got {image_size!r}")
    data_dir = None if data_dir is None else os.fspath(data_dir)
    tfds = import_tfds(otherwise="")
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetUnavailableError(f"TFDS knows no dataset {name!r}: neither one of its registered datasets "
                                      f"(tfds.list_builders()) nor prepared in {_where(data_dir)}") from None
    except Exception as e:  # noqa: BLE001
        raise DatasetUnavailableError(f"TFDS dataset {name!r} cannot be opened in {_where(data_dir)} "
                                      f"({_first_line(e)}); {_prepare_hint(name, data_dir)}") from None
    try:
        splits = tuple(str(s) for s in builder.info.splits.keys())
    except Exception:  # noqa: BLE001 - a mocked or partial info
        splits = ()
    base = split.split("[")[0].strip()
    if splits and "+" not in split and base not in splits:
        raise ValueError(f"TFDS dataset {name!r} has no split {base!r}; its splits: {', '.join(splits)}")
    try:
        records = _data_source(tfds, name, split, data_dir, download=download)
    except DatasetUnavailableError:
        try:
            prepared = builder.is_prepared()
        except Exception:  # noqa: BLE001
            prepared = True
        if download or prepared:
            raise
        raise DatasetUnavailableError(f"TFDS dataset {name!r} is not prepared in {_where(data_dir)}; "
                                      f"{_prepare_hint(name, data_dir)}") from None
    info = getattr(records, "dataset_info", None) or builder.info
    features = info.features
    shape = _picture(_feature(features, image_feature, "image", name), image_feature, "image", name, (1, 3, 4))
    num_classes = _check_class(_feature(features, label_feature, "label", name), label_feature, "label", name)
    if bias_feature is not None:
        _check_class(_feature(features, bias_feature, "bias", name), bias_feature, "bias", name)
    if mask_feature is not None:
        _picture(_feature(features, mask_feature, "mask", name), mask_feature, "mask", name, (1,))
    if image_size is None and None in shape[:2]:
        raise ValueError(f"TFDS dataset {name!r} feature {image_feature!r} (image) has no fixed size (shape "
                         f"{shape}); give image_size, the side of the square images to resize them to")
    mode = "grey" if len(shape) == 2 or shape[2] == 1 else "rgb"
    source = TfdsSource(name, split, data_dir, image_feature, label_feature, bias_feature, mask_feature,
                        None if image_size is None else int(image_size), mode, num_classes, splits, len(records))
    object.__setattr__(source, "_records", records)
    return source


__all__ = ["TfdsSource", "feature_paths", "open_tfds"]
