"""The ``jaxbias`` command: ``demo``, ``train``, ``sweep``, ``correct``, ``evaluate``, ``unlearn``, ``attribute``.

Every sub-command has ``--help``; commands that print results take ``--json``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import threading
import typing
import warnings
from typing import Any, Sequence

from jaxbias import __version__, datasets, methods, models, runs, settings
from jaxbias.training.checkpoint import latest_epoch
from jaxbias.data.sources import DatasetUnavailableError  # data not given or not prepared: a usage error
from jaxbias.methods import fmd
from jaxbias.report import markdown_table
from jaxbias.runs import CorrectionConfig, RegionConfig, RunConfig, attribute, correct, measure
from jaxbias.runs.config import data_fields, settings_names
from jaxbias.runs.demo import run_demo
from jaxbias.runs.unlearning import save_params, summary_rows, unlearn_workdir
from jaxbias.sweep import grid
from jaxbias.workdir import WorkdirBusyError, WorkdirNotWritableError, run_path  # busy/unwritable: a usage error


def _names(text: str) -> tuple[str, ...]:
    out = tuple(s.strip() for s in text.split(",") if s.strip())
    if not out:
        raise argparse.ArgumentTypeError(f"--trainable expects comma-separated parameter groups, got {text!r}")
    return out


def _kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--hp expects KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def _summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, rep in results["eval"].items():
        rows.append(
            {
                "set": name,
                "accuracy": rep["accuracy"],
                "group_mean": rep.get("group_mean", float("nan")),
                "conflicting": rep.get("conflicting", float("nan")),
                "worst_group": rep.get("worst_group", float("nan")),
            }
        )
    return rows


def _print_eval(results: dict[str, Any], as_json: bool) -> None:
    if as_json:
        printable = {k: v for k, v in results.items() if k != "state"}
        print(json.dumps(printable, indent=2))
    else:
        print(markdown_table(_summary_rows(results), ["set", "accuracy", "group_mean", "conflicting", "worst_group"]))


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """The run settings (:class:`jaxbias.runs.RunConfig`) as flags; a flag given overrides ``--config``."""
    S = argparse.SUPPRESS  # only flags given reach the namespace: the others come from --config or the defaults
    defaults = RunConfig()

    def d(name: str) -> Any:
        return getattr(defaults, name)
    p.add_argument("--config", default=None, metavar="FILE",
                   help="run settings from a TOML or JSON file (keys: the flags' names with underscores; a run's "
                   "config.json works too); flags given here override it")
    takes = [n for n in datasets.available() if getattr(datasets.get(n), "ARGUMENT", None)]
    p.add_argument("--dataset", default=S, type=_dataset_name, metavar="NAME",
                   help=f"a dataset of jaxbias.datasets ({', '.join(datasets.available())}; a new file there is a new "
                   "dataset); its settings are the data flags below; "
                   + ", ".join(f"{n}:{datasets.get(n).ARGUMENT.upper()}" for n in takes)
                   + " set the first of them (e.g. folder:PATH = folder --root PATH); "
                   f"default {d('dataset')}")
    p.add_argument("--model", default=S, metavar="NAME",
                   help=f"a registered model ({', '.join(models.available())}; jaxbias.models.register adds one) or "
                   "package.module:factory, a factory of your package returning a Linen or NNX network (wrapped, "
                   "its --layers tapped); its settings are the model flags below; "
                   f"default {d('model')}")
    p.add_argument("--maps", default=S, metavar="DIR",
                   help="per-image maps of the training images from `jaxbias attribute --out DIR` on the same data, "
                   "as the training masks (what --method targeted_noise hides)")
    p.add_argument("--weights", default=S, metavar="PATH",
                   help="start from these weights instead of the seed's initialisation: a .npz or .safetensors file "
                   "or an orbax checkpoint directory, keys params/..., batch_stats/... as in the model's variables "
                   "(jaxbias.models.save_weights writes them); checked against the model before the workdir is "
                   "written; not with --from")
    p.add_argument("--method", default=S, choices=methods.training(),
                   help=f"training method (default {d('method')}); its hyperparameters are the flags below")
    p.add_argument("--epochs", type=int, default=S, help=f"default {d('epochs')}")
    p.add_argument("--batch-size", type=int, default=S, help=f"default {d('batch_size')}")
    p.add_argument("--lr", type=float, default=S, help=f"default {d('lr')}")
    p.add_argument("--weight-decay", type=float, default=S, help=f"default {d('weight_decay')}")
    p.add_argument("--decay-every", type=int, default=S,
                   help=f"multiply the learning rate by 0.1 every N epochs (0: never; default {d('decay_every')})")
    p.add_argument("--seed", type=int, default=S, help="default 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--feed", default=S, choices=["auto", "device", "host"],
                   help="how batches reach the step: device = the training set on the device, each epoch one "
                   "compiled scan; host = gathered and sent per step; auto (default) = device when the data fit")
    p.add_argument("--normalize", default=S, metavar="imagenet|MEANS/STDS",
                   help="normalise the model's inputs per channel as its first operation, (x - mean) / std: imagenet "
                   "(torchvision's, for ImageNet weights) or MEANS/STDS, e.g. 0.5/0.25; the data stay in [0, 1]; "
                   "default none")
    p.add_argument("--augment", default=S, metavar="flip,crop:P",
                   help="random transforms of each training batch inside the compiled step (images only): flip = "
                   "mirror left-right with probability 1/2, crop:P = pad P zero pixels per side and cut a random "
                   "window of the original size; masks move with their images; default none")
    _add_data_args(p, datasets.available())
    _add_owned_args(p, "model", {**{n: models.get(n).Settings for n in models.available()},
                                 models.IMPORTED: models.Imported},
                    "model settings (from each registered model's Settings; those of --model apply)",
                    taken=set(RunConfig.__dataclass_fields__) | _data_names())
    _add_method_args(p, methods.training())


def _dataset_name(text: str) -> str:
    """An argparse ``type``: a registered dataset name, or ``name:VALUE`` (:func:`jaxbias.datasets.split_name`)."""
    try:
        name, _ = datasets.split_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if name not in datasets.available():
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(datasets.available())})")
    return text


def _with_named_setting(settings: dict[str, Any], data: dict[str, Any], where: str) -> None:
    """Split ``settings["dataset"]`` given as ``name:VALUE`` into the name and its setting, added to ``data`` (a
    setting given both ways must agree)."""
    if ":" not in str(settings.get("dataset", "")):
        return
    name, named = datasets.split_name(settings["dataset"])
    for k, v in named.items():
        if data.get(k) not in (None, v):
            raise ValueError(f"--dataset {settings['dataset']} gives {k}={v!r} but {where} gives {k}={data[k]!r}: "
                             "give it once")
    settings["dataset"] = name
    data.update(named)


def _data_names() -> set[str]:
    return {f for n in datasets.available() for f in data_fields(n)}


def _add_data_args(p: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """The data flags of the given datasets (:func:`_add_owned_args` of their ``Settings``)."""
    _add_owned_args(p, "data", {n: datasets.get(n).Settings for n in names},
                    "data settings (from each dataset's Settings; those of --dataset apply)",
                    taken=set(RunConfig.__dataclass_fields__))


def _add_owned_args(p: argparse.ArgumentParser, kind: str, classes: dict[str, type], title: str, *,
                    taken: set[str]) -> None:
    """One flag per field of the owners' settings classes (``kind``: ``data`` or ``model``), read from each class
    (its field types, ``CHOICES``, defaults and docstring); a flag serves every owner with a field of its name.
    A field named like a run setting (``taken``) is ``--KIND-NAME``."""
    owners: dict[str, list[str]] = {}
    hints: dict[str, Any] = {}
    choices: dict[str, list[Any]] = {}
    helps: dict[str, dict[str, list[str]]] = {}
    for name, cls in classes.items():
        docs, types = settings.attribute_docs(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(name)
            hints.setdefault(f.name, types[f.name])
            allowed = getattr(cls, "CHOICES", {}).get(f.name)
            if allowed is not None:
                choices.setdefault(f.name, [])
                choices[f.name] += [c for c in allowed if c not in choices[f.name]]
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            text = settings.plain(docs.get(f.name, f.name)).replace("%", "%%") + f" (default {shown})"
            helps.setdefault(f.name, {}).setdefault(text, []).append(name)
    group = p.add_argument_group(title)
    flags = {}
    for field in owners:
        flags[field] = flag = "--" + (f"{kind}-{field}" if field in taken else field).replace("_", "-")
        group.add_argument(flag, dest=f"{kind}__{field}", default=argparse.SUPPRESS,
                           metavar=None if field in choices else "V",
                           type=_settings_type(hints[field], flag), choices=choices.get(field),
                           help=" | ".join(f"{', '.join(who)}: {text}" for text, who in helps[field].items()))
    p.set_defaults(**{f"_{kind}_owners": owners, f"_{kind}_flags": flags})


def _owned_overrides(args: argparse.Namespace, kind: str, owner: str) -> dict[str, Any]:
    """The ``kind`` (``data``/``model``) settings given as flags, checked to be settings of ``owner``."""
    owners, flags = getattr(args, f"_{kind}_owners", {}), getattr(args, f"_{kind}_flags", {})
    prefix = f"{kind}__"
    given = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    word = "dataset" if kind == "data" else kind
    for field in given:
        if owner not in owners.get(field, ()):
            raise ValueError(f"{flags[field]} is a setting of {', '.join(owners.get(field, []))}, not of {word} "
                             f"{owner!r}")
    return given


def _data_overrides(args: argparse.Namespace, dataset: str) -> dict[str, Any]:
    """The data settings given as flags, checked to be settings of ``dataset``."""
    return _owned_overrides(args, "data", dataset)


def _reserved() -> set[str]:
    """Names a hyperparameter flag must not shadow (a clashing field is --hp-NAME instead)."""
    return set(settings_names()) | {"config", "no_progress", "hp", "workdir", "resume", "json", "sweep", "seeds",
                                    "lrs", "base", "no_vmap", "out", "n"}


def _hp_flag(field: str) -> str:
    return f"--hp-{field}" if field in _reserved() else f"--{field.replace('_', '-')}"


def _add_method_args(p: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """One flag per hyperparameter of the given methods, read from each method's ``Hparams`` (no CLI edit)."""
    owners: dict[str, list[str]] = {}
    helps: dict[str, list[str]] = {}
    for name in names:
        mod = methods.get(name)
        docs = methods.field_docs(mod)
        for f in methods.fields(mod):
            owners.setdefault(f.name, []).append(name)
            default = getattr(mod.Hparams(), f.name)
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            text = docs.get(f.name, f.name).replace("``", "").replace("%", "%%")
            helps.setdefault(f.name, []).append(f"{name}: {text} ({methods.type_name(mod, f.name)}; default {shown})")
    group = p.add_argument_group("method hyperparameters (from each method's Hparams; also --hp KEY=VALUE)")
    for field, who in owners.items():
        group.add_argument(_hp_flag(field), dest=f"hp__{field}", default=argparse.SUPPRESS, metavar="V",
                           help=" | ".join(helps[field]))
    p.set_defaults(_hp_owners=owners)
    p.add_argument("--hp", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="any method hyperparameter (repeatable)")


def _method_overrides(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The hyperparameters given as flags (--NAME V or --hp NAME=V), checked against ``method``'s fields."""
    hp = {}
    owners = getattr(args, "_hp_owners", {})
    for key, value in vars(args).items():
        if key.startswith("hp__"):
            field = key[4:]
            if method not in owners.get(field, ()):
                raise ValueError(f"{_hp_flag(field)} is a hyperparameter of {', '.join(owners.get(field, []))}, "
                                 f"not of method "
                                 f"{method!r}")
            hp[field] = value

    for key, value in args.hp:  # checked here to name the flag; the text is kept (make_hparams casts it)
        try:
            methods.parse_value(methods.get(method), key, value)
        except ValueError as e:
            raise ValueError(f"--hp {key}={value}: {e}") from None
        hp[key] = value
    return hp


def run_config(args: argparse.Namespace, **extra: Any):
    """The :class:`jaxbias.runs.RunConfig` of ``--config`` (if any) with the flags given on top.

    Run-setting flags default to ``argparse.SUPPRESS``, so the namespace holds
    only the ones given: those, ``extra``, the data and the hyperparameter flags override the file.
    """
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    given = {k: v for k, v in vars(args).items() if k in run_fields}
    path = getattr(args, "config", None)
    file = RunConfig.read(path) if path else {}
    if ":" in str(file.get("dataset", "")):
        file_data = dict(file.get("data") or {})
        _with_named_setting(file, file_data, "the config file")
        file["data"] = file_data
    method = given.get("method", file.get("method", RunConfig.method))
    dataset = datasets.split_name(given.get("dataset", file.get("dataset", RunConfig.dataset)))[0]
    file_model = file.get("model", RunConfig.model)
    model = given.get("model", file_model.get("name") if isinstance(file_model, dict) else file_model)
    model_flags = _owned_overrides(args, "model", models.IMPORTED if models.is_import(model) else model)
    # the file's hyperparameters go with the method that results, its data settings with the dataset that
    # results; those of a file whose own method or dataset the flags replace are left out
    file_hp = dict(file.get("hparams") or {}) if file.get("method", method) == method else {}
    own = file.get("dataset", dataset)
    if own != dataset:
        file.pop("data", None)
        for k in data_fields(own) if own in datasets.available() else ():
            file.pop(k, None)
    data_flags = _data_overrides(args, dataset)
    _with_named_setting(given, data_flags, "its flag")
    overrides = {**given, **extra, **data_flags, **({"model_settings": model_flags} if model_flags else {}),
                 "hparams": {**file_hp, **_method_overrides(args, method)}}
    try:
        return RunConfig.from_dict(file, **overrides)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config file {path!r}: {e}" if path else str(e)) from None


def _add_resume_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_const", const=True, default=False,
                       help="continue the run in --workdir from its newest checkpoint (refused when the workdir "
                       "holds no run, or one configured differently)")
    group.add_argument("--auto-resume", dest="resume", action="store_const", const="auto",
                       help="resume when --workdir holds a run, else start it (for a job script that re-runs one "
                       "command after a preemption)")


def _err(*parts: Any) -> None:
    """Progress and logs: standard error, so that standard output holds only the results (--json)."""
    print(*parts, file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    def log(rec):
        ev = rec.get("eval", {})
        accs = " ".join(f"{k}={v['accuracy']:.4f}" for k, v in ev.items())
        _err(f"epoch {rec['epoch']:3d}  loss={rec['loss']:.4f}  {accs}  ({rec['seconds']:.1f}s)")

    run = runs.train(run_config(args), workdir=args.workdir, resume=args.resume, progress=not args.no_progress,
                     log=log)
    _print_eval(run.results, args.json)
    return 0


def _sweep_axis(text: str) -> tuple[str, list[Any]]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--sweep expects KEY=V1,V2,..., got {text!r}")
    key, raw = text.split("=", 1)
    values: list[Any] = []
    for item in (s.strip() for s in raw.split(",")):
        if not item:
            continue
        for cast in (int, float):
            try:
                values.append(cast(item))
                break
            except ValueError:
                pass
        else:
            values.append(item)  # kept: the library says why a non-number cannot be swept
    if not key.strip() or not values:
        raise argparse.ArgumentTypeError(f"--sweep expects KEY=V1,V2,... with at least one value, got {text!r}")
    return key.strip(), values


def _number_list(cast, flag: str):
    def parse(text: str) -> list[Any]:
        try:
            out = [cast(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects comma-separated {cast.__name__}s, got {text!r}") from None
        if not out:
            raise argparse.ArgumentTypeError(f"{flag} expects at least one value, got {text!r}")
        return out

    return parse


def cmd_sweep(args: argparse.Namespace) -> int:
    axes: dict[str, list[Any]] = {}
    for key, values in args.sweep:
        if key in axes:
            raise ValueError(f"--sweep names {key!r} twice; give all its values in one --sweep {key}=V1,V2,...")
        axes[key] = values
    for key, flag, values in (("seed", "--seeds", args.seeds), ("lr", "--lrs", args.lrs)):
        if values is not None:
            if key in axes:
                raise ValueError(f"{flag} and --sweep {key}=... both set {key}; use one of them")
            axes[key] = values
    if not axes:
        raise ValueError("nothing to sweep: give --sweep KEY=V1,V2,... (a numeric method hyperparameter), "
                         "--seeds and/or --lrs")

    def log(records):
        losses = " ".join("–" if r.get("loss") is None else f"{r['loss']:.4f}" for r in records)
        _err(f"epoch {records[0]['epoch']:3d}  loss per member: {losses}  ({records[0]['seconds']:.1f}s)")

    config = run_config(args, members=tuple(grid(**axes)), vectorize=not args.no_vmap)
    results = runs.sweep(config, workdir=args.workdir, resume=args.resume, progress=not args.no_progress,
                         log=log).results
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    keys = list(results["members"][0]["settings"])
    rows, columns = [], ["member", *keys, "loss"]
    for m in results["members"]:
        loss = m["final"].get("loss")
        row = {"member": m["member"], **m["settings"], "loss": "diverged" if loss is None else loss}
        row["lr"] = f"{row['lr']:g}"
        for name, rep in m["eval"].items():
            row[f"{name} acc"] = rep["accuracy"]
            if "group_mean" in rep:
                row[f"{name} group mean"] = rep["group_mean"]
        for c in row:
            if c not in columns:
                columns.append(c)
        rows.append(row)
    print(markdown_table(rows, columns))
    print(f"{len(rows)} members in {results['seconds']:.1f} s; the step was compiled {results['traces']} time(s)")
    return 0


def _epoch_log():
    def log(rec):
        extra = " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k not in ("epoch", "step", "seconds", "eval")
                         and isinstance(v, float))
        _err(f"epoch {rec['epoch']:3d}  {extra}  ({rec['seconds']:.1f}s)")

    return log


def cmd_correct(args: argparse.Namespace) -> int:
    hp = _method_overrides(args, args.method)
    try:
        chosen = _classes(hp["classes"]) if "classes" in hp else None
    except argparse.ArgumentTypeError as e:
        raise ValueError(str(e)) from None
    res = correct(base=args.base, method=args.method, hparams=hp, config=_settings_from_args(CorrectionConfig, args),
                  chosen=chosen, workdir=args.workdir, resume=args.resume, progress=not args.no_progress,
                  log=_epoch_log())
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k not in ("state", "run")}, indent=2))
    else:
        keys = ["clean", "artifact", "chosen_clean", "other_clean", "chosen_artifact", "other_artifact", "tcav",
                "tcav_sens", "artifact_flip_to_target"]
        rows = [{"model": "uncorrected", **{k: res["base_report"][k] for k in keys}},
                {"model": args.method, **{k: res["report"][k] for k in keys}}]
        print(markdown_table(rows, ["model", *keys]))
        print(f"{res['seconds_per_epoch']:.2f} s / epoch")
    return 0


def _classes(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes expects comma-separated class indices, got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"--classes expects non-negative class indices, got {text!r}")
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = measure.with_base(runs.restore(args.workdir))  # one restore of the run and of its base
    dataset = run.config.load_data()
    results = measure.evaluate(run, dataset)
    _err(f"evaluated the checkpoint of epoch {results['epoch']} in {args.workdir}")
    if args.heatmaps:
        results["heatmaps"] = measure.heatmaps(run, dataset, out_dir=args.out, n=args.n)
    _print_eval(results, args.json)
    if args.heatmaps and not args.json:
        print(f"wrote {results['heatmaps']}")
    if "artifact_report" in results and not args.json:
        rep = results["artifact_report"]
        keys = ["clean", "artifact", "chosen_clean", "other_clean", "chosen_artifact", "other_artifact", "tcav",
                "tcav_sens", "artifact_flip_to_target"]
        print(markdown_table([{k: rep[k] for k in keys}], keys))
    return 0


def cmd_unlearn(args: argparse.Namespace) -> int:
    hp = _settings_from_args(fmd.Hparams, args)
    res = unlearn_workdir(args.base, external=args.external, hp=hp, seed=args.seed, baseline=not args.no_baseline)
    params = res.pop("_params")
    if args.out:
        res["files"] = save_params(args.out, params, res)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        rows = summary_rows(res)
        print(markdown_table(rows, list(rows[0])))
        f = res["fmd"]
        scales = ", ".join(f"{v:.3g}" for v in f["step_scales"])
        print(f"FMD edit: block {f['block'] or 'all'}, scale {scales}, {f['seconds']:.3f} s "
              f"({res['pairs']} pairs from {res['external']} external samples)")
        if args.out:
            print(f"wrote {res['files']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    summary = run_demo(out_dir=args.out, seeds=args.seeds, quick=args.quick, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        with open(summary["files"][0]) as f:
            print(f.read())
        print(f"report: {summary['files'][0]}")
    return 0


#: Datasets ``jaxbias attribute`` offers: those whose concept set carries confounder labels (``controlled`` is
#: region_mnist; a folder needs its --bias-column).
ATTRIBUTE_DATASETS = ("region_mnist", "controlled", "celeba", "folder")


def _attribute_dataset(text: str) -> str:
    """An argparse ``type``: one of :data:`ATTRIBUTE_DATASETS`, or ``name:VALUE`` of one (e.g. ``folder:PATH``)."""
    name = text if text == "controlled" else datasets.split_name(_dataset_name(text))[0]
    if name not in ATTRIBUTE_DATASETS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(ATTRIBUTE_DATASETS)})")
    return text


def cmd_attribute(args: argparse.Namespace) -> int:
    given = {"dataset": "region_mnist" if args.dataset == "controlled" else args.dataset}
    name = datasets.split_name(given["dataset"])[0]
    overrides = _data_overrides(args, name)
    _with_named_setting(given, overrides, "its flag")
    data = RunConfig(dataset=given["dataset"], seed=args.seed, data=overrides)
    region = _settings_from_args(RegionConfig, args, skip=("seed",))  # its seed: the data's (--seed)

    def log(rec):
        _err(f"epoch {rec['epoch']:3d}  loss={rec['loss']:.4f}  patch accuracy={rec['accuracy']:.3f}  "
             f"({rec['seconds']:.1f}s)")

    try:
        att = attribute(data, region, workdir=args.out, limit=args.limit, n_figure=args.n,
                        progress=not args.no_progress, log=log)
    except DatasetUnavailableError as e:
        print(f"jaxbias attribute: error: {e}", file=sys.stderr)
        return 2
    summary = att.summary
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        cols = ["dataset", "positions", "patch_accuracy", "ece", *(["iou"] if "iou" in summary else [])]
        print(markdown_table([summary], cols))
        print(f"wrote {summary['files']}")
    return 0


def _settings_type(hint: Any, flag: str):
    """An argparse ``type`` for a settings field (:func:`jaxbias.settings.parse_text` of its type hint)."""
    def convert(text: str):
        try:
            return settings.parse_text(hint, text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {settings.type_words(hint)}, got {text!r}") from None

    return convert


def _add_settings_args(p: argparse.ArgumentParser, cls: type, title: str, *, skip: Sequence[str] = ()) -> None:
    """One flag per field of the frozen dataclass ``cls`` (its type, default, ``CHOICES`` and docstring): the
    command's flags follow the settings class, none copied by hand."""
    hints = typing.get_type_hints(cls)
    docs = settings.attribute_docs(cls)
    choices = getattr(cls, "CHOICES", {})
    group = p.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        text = settings.plain(docs.get(f.name, f.name)).replace("%", "%%")
        kwargs: dict[str, Any] = {"default": f.default, "dest": f.name, "help": f"{text} (default {shown})"}
        if f.name in choices:
            kwargs["choices"] = choices[f.name]
        group.add_argument(flag, type=_settings_type(hints[f.name], flag), **kwargs)


def _settings_from_args(cls: type, args: argparse.Namespace, *, skip: Sequence[str] = (), **extra: Any):
    """``cls`` built from the flags :func:`_add_settings_args` added (the same ``skip``) and ``extra``."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip}, **extra)


#: Exit codes: bad flags, files or settings (argparse's own code) vs a run that started and failed.
USAGE_ERROR = 2
RUN_FAILED = 1
EPILOG = ("exit status: 0 done; 2 bad usage (flags, files, settings, a busy or unwritable workdir); 1 the run failed (e.g. the loss diverged); "
          "130 interrupted. A failure ends in one line on standard error (--debug: with the traceback). "
          "Results go to standard output (--json: JSON alone), progress and logs to standard error.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxbias", description="Find and remove shortcuts learned from biased data (JAX).",
                                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"jaxbias {__version__}")
    parser.add_argument("--debug", action="store_true", help="on a failure, print the traceback too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="offline: reveal a stamp shortcut, correct it (RR-ClArC, RRR, P-ClArC), "
                                    "measure the cost; writes a report")
    p.add_argument("--out", default="jaxbias_demo", help="folder for report.md, its figures and demo.json")
    p.add_argument("--seeds", type=int, default=1, help="seeds (the report gives mean ± std)")
    p.add_argument("--quick", action="store_true", help="shorter schedules (a smoke run; the claims may not hold)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the results as JSON alone on stdout")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model with a method; checkpoints every epoch")
    _add_train_args(p)
    p.add_argument("--workdir", required=True, help="folder for checkpoints, metrics.jsonl, results.json")
    _add_resume_args(p)
    p.add_argument("--devices", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="data parallelism over the first N devices (the batch size must divide by N; "
                   "default: one device). On a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N")
    p.add_argument("--json", action="store_true", help="print the final results as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train a grid of members (hyperparameters × seeds × learning rates) as one "
                       "compiled, vmapped program")
    _add_train_args(p)
    p.add_argument("--sweep", type=_sweep_axis, action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a numeric method hyperparameter and its values, e.g. lam=0.1,1,10 (repeatable; the "
                   "members are the Cartesian product of all axes)")
    p.add_argument("--seeds", type=_number_list(int, "--seeds"), default=None, metavar="S1,S2,...",
                   help="seeds axis (initialisation, data order, step keys); default: --seed")
    p.add_argument("--lrs", type=_number_list(float, "--lrs"), default=None, metavar="LR1,LR2,...",
                   help="learning-rate axis; default: --lr")
    p.add_argument("--from", dest="init_from", default=argparse.SUPPRESS,
                   help="start every member from this `jaxbias train` workdir (fine-tuning; the ClArC methods fit "
                   "their CAV on it once, shared by all members)")
    p.add_argument("--trainable", type=_names, default=argparse.SUPPRESS,
                   help="with --from: train only these parameter groups, comma-separated")
    p.add_argument("--no-vmap", action="store_true",
                   help="members take turns on one compiled single-model step instead of one vmapped step (results "
                   "equal `train`'s exactly, at about the vmapped step's speed on CPU)")
    p.add_argument("--devices", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="split the members over the first N devices (the member count must divide by N / "
                   "--data-devices; default: one device)")
    p.add_argument("--data-devices", type=int, default=argparse.SUPPRESS, metavar="M",
                   help="with --devices: also split each member's batch over M devices")
    p.add_argument("--workdir", default=None, help="folder for checkpoints, metrics.jsonl (a row per member and "
                   "epoch), results.json")
    _add_resume_args(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("correct", help="correct an artifact_mnist model (rrclarc, aclarc, pclarc, rrr, vanilla)")
    p.add_argument("--from", dest="base", required=True, help="workdir of the `jaxbias train --dataset artifact_mnist` run")
    p.add_argument("--method", required=True, choices=methods.training(),
                   help="the correcting method (the ClArC family fits its CAV on the base model)")
    _add_method_args(p, methods.training())  # --classes (rrclarc) also names the report's 'chosen' classes
    _add_settings_args(p, CorrectionConfig, "the correction (from jaxbias.runs.CorrectionConfig)")
    p.add_argument("--workdir", default=None, help="checkpoints of the corrected model (resumable)")
    _add_resume_args(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_correct)

    p = sub.add_parser("unlearn", help="FMD: debias a trained model (biased_mnist, adult, or an inserted artifact: "
                       "artifact_mnist, folder --artifact) with a few counterfactual pairs")
    p.add_argument("--from", dest="base", required=True, help="workdir of a `jaxbias train` run (biased_mnist, adult, "
                   "or a dataset with an inserted artifact: its test images with and without it are the pairs)")
    p.add_argument("--external", type=int, default=100, help="test samples that give the external counterfactual pairs")
    _add_settings_args(p, fmd.Hparams, "the FMD edit (from jaxbias.methods.fmd.Hparams)")
    p.add_argument("--seed", type=int, default=0, help="which test samples are external")
    p.add_argument("--no-baseline", action="store_true", help="skip the fine-tuning baseline")
    p.add_argument("--out", default=None, help="folder for the edited parameters (params.npz) and report.json")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_unlearn)

    p = sub.add_parser("evaluate", help="evaluate the newest checkpoint of a `train` workdir")
    p.add_argument("--workdir", required=True)
    p.add_argument("--heatmaps", action="store_true",
                   help="also write LRP heatmaps (PNG; a corrected run shows its base model's maps too)")
    p.add_argument("--out", default=None, help="folder for heatmaps.png (default: the workdir)")
    p.add_argument("--n", type=int, default=8, help="images in the heatmap figure")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("attribute", help="region attribution: train a patch classifier for a confounder, "
                       "write attribution maps and calibration plots")
    p.add_argument("--dataset", default="region_mnist", type=_attribute_dataset, metavar="NAME",
                   help="region_mnist (also: controlled): MNIST digits below a band that holds the confounder "
                   "(offline, true region known; --style); celeba: target Male, --confounder (needs the prepared "
                   "TFDS celeb_a); folder (folder:PATH = --root PATH): an image folder and its --metadata table, the "
                   "confounder its --bias-column (no true region: no IoU); --stream reads it a batch at a time. "
                   "`jaxbias train --dataset NAME --maps OUT` trains on these maps")
    # a data setting named like one of this command's flags (a folder's --limit) is --data-NAME
    _add_owned_args(p, "data", {n: datasets.get(n).Settings for n in ATTRIBUTE_DATASETS if n != "controlled"},
                    "data settings (from each dataset's Settings; those of --dataset apply)",
                    taken=set(RunConfig.__dataclass_fields__) | set(RegionConfig.__dataclass_fields__)
                    | {"limit", "n", "out", "seed", "json", "no_progress"})
    _add_settings_args(p, RegionConfig, "region classifier and maps (from jaxbias.runs.RegionConfig)", skip=("seed",))
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of every set (quick runs)")
    p.add_argument("--n", type=int, default=8, help="images in maps.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="jaxbias_attribution",
                   help="folder for attribution.json, general_map.npy, specific_maps.npy, maps.png, reliability.png")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_attribute)
    for p in sub.choices.values():  # --debug also after the command's name
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on a failure, print the traceback too")
    return parser


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines() or [""]
    return lines[0] + (" [more with --debug]" if len(lines) > 1 else "")


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted training command leaves: the epoch of its newest complete checkpoint."""
    workdir = getattr(args, "workdir", None) if hasattr(args, "resume") else None
    folder = run_path(workdir, "checkpoint_dir") if workdir else None
    epoch = latest_epoch(folder)
    if epoch is not None:
        return f"; the checkpoint of epoch {epoch} in {folder} is kept: --resume continues from it"
    return "; no checkpoint was written yet" if workdir else ""


def failure(e: Exception) -> tuple[int, str]:
    """The exit code and the one line a failed command ends with."""
    if isinstance(e, (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                      DatasetUnavailableError, WorkdirBusyError, WorkdirNotWritableError)):
        return USAGE_ERROR, f"error: {_one_line(e)}"
    if isinstance(e, (FloatingPointError, RuntimeError, OSError, MemoryError)):
        return RUN_FAILED, f"the run failed: {type(e).__name__}: {_one_line(e)}"
    return RUN_FAILED, (f"internal error: {type(e).__name__}: {_one_line(e)} (a bug in jaxbias: rerun with --debug "
                        "for the traceback and report it)")


@contextlib.contextmanager
def _quiet_background(enabled: bool):
    """Silence what library threads print about a failure we already report in one line.

    orbax logs its writer threads' failures (absl, with tracebacks), a failed asynchronous write's task is
    logged by asyncio when it is collected ("Task exception was never retrieved"), and tensorstore's late
    callbacks into orbax's closed event loops end as unraisable exceptions or thread exceptions.
    """
    absl, aio = logging.getLogger("absl"), logging.getLogger("asyncio")
    saved = absl.level, sys.unraisablehook, threading.excepthook, warnings.filters[:], aio.level
    if enabled:
        absl.setLevel(logging.CRITICAL)
        aio.setLevel(logging.CRITICAL)
        sys.unraisablehook = lambda unraisable: None
        threading.excepthook = lambda args: None
        # an interrupted or failed asynchronous checkpoint leaves orbax's coroutines unawaited
        warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    try:
        yield
    finally:
        absl.setLevel(saved[0])
        sys.unraisablehook, threading.excepthook = saved[1:3]
        warnings.filters[:] = saved[3]
        aio.setLevel(saved[4])


def main(argv: Sequence[str] | None = None, *, _quiet_until_exit: bool = False) -> int:
    """Run the command; a failure ends in one line on stderr (the traceback too with ``--debug``).

    The ``jaxbias`` console script (:func:`entry`) keeps library threads quiet until the process ends:
    orbax's writer threads can still fail after a failed checkpoint has been reported.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = contextlib.ExitStack()
    quiet.enter_context(_quiet_background(not args.debug))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"jaxbias {args.command}: interrupted{_kept(args)}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure ends in one line
        if args.debug:
            raise
        code, line = failure(e)
        print(f"jaxbias {args.command}: {line}", file=sys.stderr)
        return code
    finally:
        if not _quiet_until_exit:
            quiet.close()


def entry() -> None:
    """The ``jaxbias`` console script."""
    sys.exit(main(_quiet_until_exit=True))


if __name__ == "__main__":
    entry()
