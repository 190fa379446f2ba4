"""Images per second through a whole 224-px input pipeline: jaxbias's streamed folder vs a PyTorch ``DataLoader``
over a PIL ``__getitem__`` (the RR-ClArC code's style), with the same number of workers, on a generated folder.

The pipeline, for every image of an epoch in a shuffled order: decode the JPEG, resize it to 224×224, draw a
timestamp artifact into the images of class 0 with p = 0.5, normalise (ImageNet mean and std), batch 64. A
batch counts as delivered when it is where the model's step would read it: normalised float32 on the JAX device,
or a normalised float32 tensor in the main process for PyTorch. Each variant runs two epochs over the whole
folder, workers started afresh each epoch (the DataLoader's default, and the host feed's); the second epoch is
timed (the files are then in the page cache for every variant alike).

- **raw decode**: the physical limit here: ``K`` processes only decoding each JPEG at its stored size (Pillow,
  libjpeg-turbo), nothing else; and the same with a reduced-scale decode (Pillow ``draft``).
- **torch DataLoader**: ``num_workers = K`` processes; ``__getitem__`` opens the file with Pillow, converts to
  RGB, resizes bilinearly to 224×224 (what torchvision's ``Resize((224, 224))`` does to a PIL image), draws the
  timestamp as the released code does it (a random ``HH:MM:SS`` written with ``ImageDraw.text`` on a
  transparent layer of random size 199–248 px, rotated by up to ±3°, resized to 224 and composited onto the
  image; mask = the text's bounding box), then ``ToTensor`` and ``Normalize`` (written out with torch
  operations: the torchvision wheel on this machine is a CUDA build that does not load with the CPU torch).
- **jaxbias**: what the ``folder`` dataset streams with ``stream``, ``workers = K`` and ``artifact stamp``
  (:class:`~jaxbias.data.folder.ArtifactSource` draws the ``stamp`` artifact into the chosen class-0 rows as it
  decodes them, :class:`~jaxbias.data.lazy.LazyImages` gives the rows as float32 in [0, 1]) read batch after
  batch by :func:`jaxbias.data.lazy.prefetched` (the host feed's grain pipeline: ``K`` threads decode and place
  the next batches), normalised on the device by one jitted function. ``decode`` ``full`` (every pixel decoded,
  the same pixels as the PyTorch side's decode) and ``reduced`` (libjpeg's DCT scaling to ≥ 224 first).
- **decode processes**: the same jaxbias pipeline with ``worker_kind process``: ``K`` spawned processes (kept for
  both epochs, as the host feed keeps them for a run: their start is not timed) decode each batch to uint8 and
  send it back; the main process divides by 255, places and normalises it.
- **pre-resized**: what a pre-processed copy adds: the same jaxbias pipeline on a folder of the images already
  resized to 224 (JPEG, quality 95), and on a pre-decoded uint8 array (an ``.npy`` file read through a memory map:
  no decode at all; the same role as an ArrayRecord of decoded images).

Usage::

    python benchmarks/input_pipeline.py [--images 5000] [--width 600 --height 450] [--workers 1,2] [--tag cpu]
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZE = 224
BATCH = 64
P = 0.5
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# --------------------------------------------------------------------------- the folder


def write_folder(root: Path, n: int, width: int, height: int, *, seed: int = 0) -> Path:
    """``n`` photo-like JPEGs (quality 90) of ``width``×``height``, classes 0/1 alternating, and ``meta.csv``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,label"]
    noise = rng.normal(0, 10, (8, height, width, 3)).astype(np.float32)
    for i in range(n):
        coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)  # smooth colour fields, like a skin or bone photo
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
        pixels = np.clip(field + noise[i % 8], 0, 255).astype(np.uint8)
        name = f"img{i:05d}.jpg"
        Image.fromarray(pixels).save(root / name, quality=90)
        lines.append(f"{name},{i % 2}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    return root / "meta.csv"


def resized_copy(root: Path, out: Path) -> tuple[Path, Path]:
    """The folder's images resized to 224×224 (bilinear; JPEG quality 95) under ``out``, and as one uint8 ``.npy``."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    lines = (root / "meta.csv").read_text().splitlines()
    (out / "meta.csv").write_text("\n".join(lines) + "\n")
    names = [line.split(",")[0] for line in lines[1:]]
    decoded = np.lib.format.open_memmap(out / "decoded.npy", "w+", np.uint8, (len(names), SIZE, SIZE, 3))
    for i, name in enumerate(names):
        with Image.open(root / name) as img:
            small = img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        small.save(out / name, quality=95)
        decoded[i] = np.asarray(small)
    decoded.flush()
    return out / "meta.csv", out / "decoded.npy"


def carriers(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Which rows carry the artifact: class 0, each with probability P (as the folder dataset draws them)."""
    return (labels == 0) & (np.random.default_rng([seed, 0]).random(labels.size) < P)


def epoch_rows(n: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([7, epoch]).permutation(n)
    return [order[i:i + BATCH] for i in range(0, n, BATCH)]


# --------------------------------------------------------------------------- raw decode


def _decode(args: tuple[str, str]) -> int:
    from PIL import Image

    path, how = args
    with Image.open(path) as img:
        if how == "reduced":
            img.draft("RGB", (SIZE, SIZE))
        img.load()
        return img.size[0]


def raw_decode(paths: list[str], workers: int, how: str) -> float:
    """Seconds for ``workers`` processes to decode every path (full size, or reduced scale ≥ 224); spawned, not
    forked: this process has started JAX's threads."""
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_decode, [(p, how) for p in paths[:workers * 4]])  # start the processes before timing
        t = time.perf_counter()
        pool.map(_decode, [(p, how) for p in paths], chunksize=16)
        return time.perf_counter() - t


# --------------------------------------------------------------------------- torch, the released code's style


def _torch_dataset(paths: list[str], labels: np.ndarray, carry: np.ndarray):
    import torch
    from PIL import Image, ImageDraw

    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]

    class Released(torch.utils.data.Dataset):
        """One image per ``__getitem__``: PIL decode, resize, timestamp, to tensor, normalise."""

        def __len__(self):
            return len(paths)

        @staticmethod
        def timestamp(img):
            rng = np.random
            text = f"{rng.randint(24):02d}:{rng.randint(60):02d}:{rng.randint(60):02d}"
            side = int(rng.randint(SIZE - 25, SIZE + 25))
            layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
            corner = [(20, 20), (20, side - 40), (side - 80, 20), (side - 80, side - 40)][rng.randint(4)]
            colour = tuple(int(c) for c in np.clip(rng.choice([10, 245], 3) + rng.normal(0, 5, 3), 0, 255))
            ImageDraw.Draw(layer).text(corner, text, fill=colour)
            layer = layer.rotate(rng.choice(np.arange(-30, 31) / 10)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            out = Image.composite(layer, img, layer)
            mask = torch.zeros(SIZE, SIZE)
            box = layer.getbbox()
            if box is not None:
                mask[box[1]:box[3], box[0]:box[2]] = 1
            return out, mask

        def __getitem__(self, i):
            img = Image.open(paths[i]).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            if carry[i]:
                img, _ = self.timestamp(img)
            t = torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1).contiguous().float().div(255)  # ToTensor
            return (t - mean) / std, int(labels[i])  # Normalize

    return Released()


def torch_epoch(dataset, workers: int, epoch: int) -> tuple[float, int]:
    import torch

    n = len(dataset)
    sampler = [int(i) for rows in epoch_rows(n, epoch) for i in rows]  # the same order as the jaxbias epochs
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers)
    t, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += x.shape[0]
    return time.perf_counter() - t, seen


# --------------------------------------------------------------------------- jaxbias


#: ImageNet normalisation on the device, compiled once for the whole run (not inside a timed epoch)
_normalise = jax.jit(lambda x: (x - MEAN) / STD)


def jax_epoch(train, workers: int, epoch: int) -> tuple[float, int]:
    """One epoch of normalised batches on the device through :func:`jaxbias.data.lazy.prefetched`."""
    from jaxbias.data.lazy import prefetched

    def read(idx):
        return _normalise(jax.device_put(train.x[idx])), jax.device_put(np.asarray(train.y)[idx])

    n = len(train.x)
    t, seen = time.perf_counter(), 0
    with contextlib.closing(prefetched(read, epoch_rows(n, epoch), workers=workers)) as batches:
        for x, _ in batches:
            x.block_until_ready()
            seen += x.shape[0]
    return time.perf_counter() - t, seen


def jax_process_epoch(train, workers: int, epoch: int, pool) -> tuple[float, int]:
    """:func:`jax_epoch` with decode processes (``worker_kind process``): ``pool``'s processes (started once for the
    run, as the host feed keeps them) send uint8 batches back; this process divides by 255, puts them on the device
    and normalises them there."""
    from jaxbias.data.lazy import finish_held, prefetched, read_held

    def placed(read):
        x, y = finish_held(train, read)[:2]
        return _normalise(jax.device_put(x)), jax.device_put(y)

    n = len(train.x)
    t, seen = time.perf_counter(), 0
    with contextlib.closing(prefetched(read_held, epoch_rows(n, epoch), workers=workers, kind="process", pool=pool,
                                       then=placed)) as batches:
        for x, _ in batches:
            x.block_until_ready()
            seen += x.shape[0]
    return time.perf_counter() - t, seen


def timed_processes(train, workers: int) -> tuple[float, int]:
    """The second of two epochs through ``workers`` decode processes kept for both (their start not timed)."""
    from jaxbias.data.lazy import hold, process_pool

    pool = process_pool(workers, hold, (train,))
    try:
        jax_process_epoch(train, workers, 0, pool)  # the first epoch: compilation, page cache, the processes' start
        return jax_process_epoch(train, workers, 1, pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Decoded:
    """A pre-decoded uint8 ``(N, 224, 224, 3)`` array on disk (memory-mapped) as a source of LazyImages."""

    def __init__(self, path: Path, carry: np.ndarray):
        self.path, self.carry, self.images = str(path), carry, None

    def read(self, i: int, field: str) -> np.ndarray:
        from jaxbias.data.artifacts import named

        if self.images is None:
            self.images = np.load(self.path, mmap_mode="r")
        image = np.array(self.images[i])
        return named("stamp")(image, None)[0] if self.carry[i] else image


def jaxbias_train(meta: Path, workers: int, decode: str, carry: np.ndarray):
    """Every image of the folder as the ``folder`` dataset streams its training rows (``stream``, ``workers``,
    ``artifact stamp``): an :class:`~jaxbias.data.folder.ArtifactSource` read through
    :class:`~jaxbias.data.lazy.LazyImages` (the dataset holds 20 % out as test; here every image is read)."""
    from jaxbias.data.folder import ArtifactSource, open_folder
    from jaxbias.data.lazy import LazyImages
    from jaxbias.types import Batch

    table = open_folder(meta.parent, meta, image_size=SIZE, decode=decode)
    source = ArtifactSource(table, "stamp", 0, carry)
    return Batch(LazyImages(source, np.arange(len(table)), item_shape=(SIZE, SIZE, 3), workers=workers),
                 table.labels)


# --------------------------------------------------------------------------- main


def reduced_difference(meta: Path, n: int = 200) -> dict[str, float]:
    """How far ``decode reduced`` moves the pixels: mean and largest |full − reduced| over the first ``n`` images
    at 224×224, in grey levels (0–255)."""
    from jaxbias.data.folder import open_folder

    full, reduced = (open_folder(meta.parent, meta, image_size=SIZE, decode=d) for d in ("full", "reduced"))
    diffs = [np.abs(full.read(i, "image").astype(np.int16) - reduced.read(i, "image").astype(np.int16))
             for i in range(min(n, len(full)))]
    return {"images": len(diffs), "mean_abs_grey_levels": round(float(np.mean(diffs)), 3),
            "max_abs_grey_levels": int(np.max(diffs))}


def timed(epoch_fn, *args) -> tuple[float, int]:
    epoch_fn(*args, 0)  # the first epoch: compilation, page cache
    return epoch_fn(*args, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--width", type=int, default=600)
    ap.add_argument("--height", type=int, default=450)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--folder", help="reuse (or keep) the generated folder here")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="cpu")
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from _common import md_table, write_results

    from jaxbias.data.lazy import LazyImages
    from jaxbias.types import Batch

    workers = [int(k) for k in a.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.folder) if a.folder else Path(tmp)
        src = base / f"photos_{a.images}_{a.width}x{a.height}"
        if not (src / "meta.csv").exists():
            t = time.perf_counter()
            write_folder(src, a.images, a.width, a.height)
            print(f"wrote {a.images} JPEGs in {time.perf_counter() - t:.0f} s", flush=True)
        small = base / f"resized_{a.images}_{a.width}x{a.height}"
        if not (small / "decoded.npy").exists():
            resized_copy(src, small)
        meta = src / "meta.csv"
        names = [line.split(",")[0] for line in meta.read_text().splitlines()[1:]]
        paths = [str(src / name) for name in names]
        labels = np.array([int(line.split(",")[1]) for line in meta.read_text().splitlines()[1:]])
        carry = carriers(labels)
        difference = reduced_difference(meta)
        rows, raw = [], {}
        for k in workers:
            raw[k] = {how: a.images / raw_decode(paths, k, how) for how in ("full", "reduced")}
            variants = [
                ("raw decode (full size)", "–", lambda: (a.images / raw[k]["full"], a.images)),
                ("raw decode (reduced scale)", "–", lambda: (a.images / raw[k]["reduced"], a.images)),
                ("torch DataLoader, PIL __getitem__", "full",
                 lambda: timed(torch_epoch, _torch_dataset(paths, labels, carry), k)),
                ("jaxbias folder stream", "full", lambda: timed(jax_epoch, jaxbias_train(meta, k, "full", carry), k)),
                ("jaxbias folder stream", "reduced", lambda: timed(jax_epoch, jaxbias_train(meta, k, "reduced", carry), k)),
                ("jaxbias folder stream, decode processes", "full",
                 lambda: timed_processes(jaxbias_train(meta, k, "full", carry), k)),
                ("jaxbias folder stream, decode processes", "reduced",
                 lambda: timed_processes(jaxbias_train(meta, k, "reduced", carry), k)),
                ("jaxbias, pre-resized 224 JPEGs", "full",
                 lambda: timed(jax_epoch, jaxbias_train(small / "meta.csv", k, "full", carry), k)),
                ("jaxbias, pre-decoded uint8 (.npy, memory-mapped)", "–",
                 lambda: timed(jax_epoch, Batch(LazyImages(Decoded(small / "decoded.npy", carry), np.arange(a.images),
                                                           item_shape=(SIZE, SIZE, 3)), labels), k)),
            ]
            torch_rate = None
            for name, decode, run in variants:
                seconds, seen = run()
                rate = seen / seconds
                torch_rate = rate if name.startswith("torch") else torch_rate
                rows.append({"workers": k, "pipeline": name, "decode": decode, "images": seen,
                             "seconds": round(seconds, 3), "images_per_s": round(rate, 1),
                             "share_of_raw_decode": round(rate / raw[k]["full"], 3),
                             "vs_torch": None if torch_rate is None else round(rate / torch_rate, 3)})
                print(rows[-1], flush=True)
    import torch
    table = md_table(["workers", "pipeline", "decode", "images/s", "× torch DataLoader", "share of raw full decode",
                      "epoch s"],
                     [[r["workers"], r["pipeline"], r["decode"], r["images_per_s"], r["vs_torch"],
                       r["share_of_raw_decode"], r["seconds"]] for r in rows])
    notes = (f"{a.images} generated {a.width}×{a.height} JPEGs (quality 90, classes 0/1), one epoch each (the "
             "second of two; workers started afresh each epoch), shuffled, batches of 64, decode → resize to "
             "224×224 → timestamp into class 0 with p = 0.5 → ImageNet normalisation; a batch counts when it is "
             "normalised float32 where the step reads it (JAX device / the main process). Regenerate: "
             f"`python benchmarks/input_pipeline.py --images {a.images} --width {a.width} --height {a.height} "
             f"--workers {a.workers}`. See the module docstring for what each row does. `decode reduced` moves the "
             f"224×224 pixels by {difference['mean_abs_grey_levels']} grey levels on average (largest "
             f"{difference['max_abs_grey_levels']}) from the full decode's, over the first {difference['images']} "
             "images; every other row decodes every pixel.")
    write_results("input_pipeline", a.tag, rows, table, a.out, extra={"torch": torch.__version__, "settings": vars(a),
                                                                       "reduced_vs_full_pixels": difference}, notes=notes)


if __name__ == "__main__":
    main()
