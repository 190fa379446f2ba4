"""Hyperparameter sweeps and seed ensembles as one vmapped, jitted program.

``K`` members are ``K`` copies of :func:`jaxbias.train.fit` that differ in
numeric method hyperparameters (RRR/RR-ClArC ``lam``, EnD ``alpha``/``beta``,
...), the learning rate and the seed. Their ``TrainState``s are stacked along
a leading axis and the ordinary step of :func:`jaxbias.train.make_train_step`
runs under ``jax.vmap`` over ``(state, hyperparameter values, batch)``; the
vmapped step is jitted once with the stacked state donated::

    states_{t+1}[k] = step(states_t[k], batch_t[k]; hp with values[k])   k = 1..K

Each member keeps ``fit``'s exact schedule: ``init_key, data_key, step_key =
split(key(seed), 3)``; epoch ``e`` shuffles with ``fold_in(data_key, e)``
(:func:`jaxbias.data.iterators.batch_indices`, so members with different
seeds see different batches) and step ``t`` uses ``fold_in(step_key, t)``. The
learning rate lives in the optimiser state through
:func:`optax.inject_hyperparams`, so it is per member and checkpointed.

Numerics: under ``vmap`` XLA batches the kernels (a ``(K, B, ·)`` matmul, a
grouped convolution on other backends), which may sum floats in another order than ``fit``'s
single-model program; Adam magnifies such ulp-level differences wherever a
gradient is itself rounding noise (a convolution bias followed by batch-norm
has an exactly zero true gradient), so vmapped members match ``fit`` to
~1e-6 on dense nets and only statistically on conv nets with batch-norm.
EnD is the sensitive case among the methods: its Gram terms are sums of
products of normalised features that largely cancel, so some gradient
coordinates are rounding-sized. Measured on an MLP (``tests/test_sweep.py``):
vmapped and turn-taking members agree to 1e-7 (relative, parameters) after
one epoch, to 8e-8 after five with SGD, and drift to 1.5e-5 after five with
Adam; a longer CLI sweep saw 2e-3 in the loss. A members-over-devices mesh
reorders the same sums, with the same effect. This is the tolerance of the
vmapped path; ``vectorize=False`` (``--no-vmap``) is bit-exact.
``vectorize=False`` runs the members in turns on one compiled single-model
step instead (hyperparameters as arguments): still one compilation, and
bit-for-bit ``fit``'s numbers. On XLA:CPU both run conv nets at the speed
of sequential runs: the bundled models' convolutions map over the members
instead of becoming XLA's slow grouped convolution (``benchmarks/sweep.py``).

Method ``Hparams`` validate with ``float(...)`` in ``__post_init__``, which a
tracer cannot pass. Every member's values are therefore validated up front
with the real dataclass; inside the step the traced values are written into a
copy of ``hp`` without re-running the validation (:func:`with_values`). A
field can be swept only if the loss uses it arithmetically: one abstract trace
per swept field rejects fields that decide Python control flow or a shape
(a variant, a layer name, ``if hp.l2:``) and fields the loss never reads
(only ``init`` does).

Example:
  >>> members = grid(lam=[0.1, 1.0, 10.0], seed=[0, 1])       # 6 members
  >>> res = fit_sweep(module=module, method=rrr, hp=rrr.Hparams(), members=members,
  ...                 train=train, epochs=5, batch_size=64, lr=1e-3)
  >>> res.history[3][-1]["loss"], res.member_params(3)
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import numbers
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbias import models as models_lib
from jaxbias.data.iterators import num_batches
from jaxbias.train import evaluate, hp_dict, initial_method_state, method_loss
from jaxbias.training import loop
from jaxbias.training.parallel import Layout, to_host
from jaxbias.training.state import TrainState, create_train_state, freeze, inject_lr, schedule_optimizer
from jaxbias.training.step import make_predict, make_train_step, stack, unstack
from jaxbias.types import Batch, ModelState, Params
from jaxbias.workdir import Store

__all__ = [
    "RESERVED",
    "SweepResult",
    "grid",
    "check_members",
    "zipped",
    "with_values",
    "make_member_step",
    "make_sweep_step",
    "fit_sweep",
]

#: Member keys that are not method hyperparameters.
RESERVED = ("lr", "seed")


# --------------------------------------------------------------------------- #
# members
# --------------------------------------------------------------------------- #


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """The Cartesian product of ``axes`` as a member list (last axis varies fastest).

    Example:
      >>> grid(lam=[0.1, 1.0], seed=[0, 1])
      [{'lam': 0.1, 'seed': 0}, {'lam': 0.1, 'seed': 1}, {'lam': 1.0, 'seed': 0}, {'lam': 1.0, 'seed': 1}]
    """
    for name, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"axis {name!r} must be a non-empty sequence of values; got {values!r}")
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]


def zipped(**columns: Sequence[Any]) -> list[dict[str, Any]]:
    """Members taken column-wise: member ``k`` has ``columns[name][k]`` for every name.

    Example:
      >>> zipped(lam=[0.1, 1.0], lr=[1e-3, 3e-3])
      [{'lam': 0.1, 'lr': 0.001}, {'lam': 1.0, 'lr': 0.003}]
    """
    if not columns:
        raise ValueError("zipped needs at least one column, e.g. zipped(lam=[0.1, 1.0])")
    lengths = {}
    for name, values in columns.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(f"column {name!r} must be a sequence of values; got {values!r}")
        lengths[name] = len(values)
    if len(set(lengths.values())) != 1:
        raise ValueError(f"columns must have the same length (one value per member); got lengths {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("columns are empty: a sweep needs at least one member")
    return [{name: columns[name][k] for name in columns} for k in range(n)]


def _py(v: Any) -> int | float:
    return int(v) if isinstance(v, (numbers.Integral, np.integer)) else float(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (numbers.Real, np.number)) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True)
class _Plan:
    """The validated sweep: per-member settings and the stacked values of the swept fields."""

    settings: list[dict[str, Any]]  # per member: lr, seed and every swept field
    hparams: list[Any]  # per member: the validated Hparams
    fields: tuple[str, ...]  # swept Hparams fields, in dataclass order
    values: dict[str, np.ndarray]  # field -> (K,) values


def _plan(method: ModuleType, hp: Any, members: Any, *, lr: float, seed: int) -> _Plan:
    name = method.__name__.rsplit(".", 1)[-1]
    if isinstance(members, (Mapping, str, bytes)) or not hasattr(members, "__iter__"):
        raise ValueError(
            f"members must be a sequence of mappings (one per member, e.g. grid(lam=[0.1, 1.0])); got "
            f"{type(members).__name__}"
        )
    members = list(members)
    if len(members) == 0:
        raise ValueError("members is empty: a sweep needs at least one member")
    field_names = [f.name for f in dataclasses.fields(hp)] if dataclasses.is_dataclass(hp) else []
    clash = sorted(set(field_names) & set(RESERVED))
    if clash:
        raise ValueError(f"{name}.Hparams has fields {clash} that clash with the reserved member keys {RESERVED}")
    static = {f.name for f in dataclasses.fields(hp) if f.metadata.get("static")} if field_names else set()
    settings, hparams, swept = [], [], set()
    for i, m in enumerate(members):
        if not isinstance(m, Mapping):
            raise ValueError(f"members[{i}] must be a mapping such as {{'lam': 1.0, 'seed': 0}}; got {m!r}")
        for k, v in m.items():
            if k in RESERVED:
                continue
            if k not in field_names:
                raise ValueError(
                    f"members[{i}] names {k!r}, which is neither one of {list(RESERVED)} nor a field of "
                    f"{name}.Hparams {field_names}"
                )
            if k in static:
                raise ValueError(f"hp.{k} is static (fixed for the compiled step: a shape, a code path or the "
                                 "state fitted before training): run one sweep per value")
            if not _is_number(v):
                raise ValueError(
                    f"members[{i}][{k!r}] = {v!r} ({type(v).__name__}) is not a number: only numeric "
                    f"hyperparameters can be swept; a {type(v).__name__} field selects code paths, so run one "
                    "sweep per value"
                )
            swept.add(k)
        m_lr = m.get("lr", lr)
        if not _is_number(m_lr) or not (math.isfinite(float(m_lr)) and float(m_lr) > 0):
            raise ValueError(f"members[{i}]['lr'] must be a positive finite number; got {m_lr!r}")
        m_seed = m.get("seed", seed)
        if isinstance(m_seed, (bool, np.bool_)) or not isinstance(m_seed, (numbers.Integral, np.integer)):
            raise ValueError(f"members[{i}]['seed'] must be an int; got {m_seed!r}")
        overrides = {k: v for k, v in m.items() if k not in RESERVED}
        try:
            member_hp = dataclasses.replace(hp, **overrides) if overrides else hp
        except (ValueError, TypeError) as e:
            raise ValueError(f"members[{i}] = {dict(m)!r}: {e}") from e
        hparams.append(member_hp)
        settings.append({"lr": float(m_lr), "seed": int(m_seed)})
    fields = tuple(f for f in field_names if f in swept)
    values = {}
    for f in fields:
        col = [getattr(h, f) for h in hparams]
        if not all(_is_number(v) for v in col):
            bad = next(v for v in col if not _is_number(v))
            raise ValueError(
                f"hp.{f} is swept, so every member needs a number; the base hp has {bad!r}: set it in every "
                "member or give hp a numeric value"
            )
        # ints stay ints only for an int field (e.g. lam=1 for a float field is the float 1.0)
        integral = all(isinstance(v, (numbers.Integral, np.integer)) for v in [*col, getattr(hp, f)])
        values[f] = np.asarray(col, np.int32 if integral else np.float32)
    for s, h in zip(settings, hparams):
        s.update({f: _py(getattr(h, f)) for f in fields})
    seen: dict[tuple, int] = {}
    for i, s in enumerate(settings):  # two equal members would train the same model twice
        j = seen.setdefault(tuple(sorted(s.items())), i)
        if j != i:
            raise ValueError(f"members[{j}] and members[{i}] have the same settings {s}: each member must differ "
                             "(e.g. --seeds 0,0 names one seed twice)")
    return _Plan(settings, hparams, fields, values)


def check_members(method: ModuleType, hp: Any, members: Any, *, lr: float, seed: int) -> None:
    """Refuse ``members`` that :func:`fit_sweep` would refuse (unknown or static fields, a bad lr or seed, two
    equal members), without training: the run layer calls it before it writes the workdir."""
    _plan(method, hp, members, lr=lr, seed=seed)


def with_values(hp: Any, values: Mapping[str, Any]) -> Any:
    """A copy of the frozen dataclass ``hp`` with ``values`` set, skipping ``__post_init__``.

    For traced values inside a vmapped step, after the concrete values were
    validated with the real dataclass (``float(tracer)`` in a validation would fail).
    """
    if not values:
        return hp
    out = copy.copy(hp)  # copies __dict__; neither __init__ nor __post_init__ runs
    for k, v in values.items():
        object.__setattr__(out, k, v)
    return out


def _uses(jaxpr: Any, var: Any) -> bool:
    if any(v is var for v in jaxpr.outvars):
        return True
    return any(v is var for eqn in jaxpr.eqns for v in eqn.invars)


def _check_sweepable(method, module, plan: _Plan, state: TrainState, batch: Batch, train_mode: bool) -> None:
    """One abstract trace per swept field: it must reach the loss through array arithmetic."""
    name = method.__name__.rsplit(".", 1)[-1]
    key = jax.random.key(0)

    def traced_loss(values, hp):
        return method_loss(method, module, with_values(hp, values), train=train_mode)(
            state.params, state.model_state, state.method_state, batch, key
        )[0]

    # all-concrete first: a failure here is about the data or the method, not about sweeping
    jax.eval_shape(lambda: traced_loss({}, plan.hparams[0]))
    for f in plan.fields:
        v0 = plan.values[f][0]
        try:
            closed = jax.make_jaxpr(lambda v: traced_loss({f: v}, plan.hparams[0]))(v0)
        except Exception as e:  # noqa: BLE001 - the all-concrete trace passed, so tracing this field failed
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"hp.{f} cannot be swept: {name}.loss needs it as a concrete Python value (it decides control "
                f"flow, a shape or a check), not as an array; run one sweep per value. ({type(e).__name__}: {first})"
            ) from e
        if not _uses(closed.jaxpr, closed.jaxpr.invars[0]):
            raise ValueError(
                f"hp.{f} cannot be swept: {name}.loss does not use it (it matters only outside the training "
                "step, e.g. when the method state is fitted), so every member would train the same model"
            )


# --------------------------------------------------------------------------- #
# optimiser, stacking, the step
# --------------------------------------------------------------------------- #


def make_member_step(
    method: ModuleType,
    module: flax.linen.Module,
    hp: Any,
    tx: optax.GradientTransformation,
    *,
    train_mode: bool = True,
    augment: Callable[[jax.Array, Batch], Batch] | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array], Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One member's step with the swept values as arguments: ``step(state, values, batch)``, pure.

    :func:`~jaxbias.train.make_train_step` on the loss of ``hp`` carrying
    ``values`` (swept field -> scalar), so one compilation serves every member.
    """

    def member_step(state, values, batch):
        loss_fn = method_loss(method, module, with_values(hp, values), train=train_mode)
        return make_train_step(loss_fn, tx, augment=augment)(state, batch)

    return member_step


def make_sweep_step(
    method: ModuleType,
    module: flax.linen.Module,
    hp: Any,
    tx: optax.GradientTransformation,
    *,
    train_mode: bool = True,
    augment: Callable[[jax.Array, Batch], Batch] | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array], Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The vmapped step: ``step(states, values, batches) -> (states, metrics)``, pure.

    ``states`` are ``K`` stacked :class:`~jaxbias.train.TrainState`; ``values``
    maps swept ``hp`` fields to ``(K,)`` arrays; ``batches`` is a
    :class:`~jaxbias.types.Batch` with leading axes ``(K, B)``. Member ``k``
    runs :func:`make_member_step` with ``values[·][k]``; metrics have shape
    ``(K,)``. The caller jits it once, donating ``states``.

    Example:
      >>> step = jax.jit(make_sweep_step(rrr, module, rrr.Hparams(), tx), donate_argnums=0)
      >>> states, metrics = step(states, {"lam": jnp.array([1.0, 10.0])}, batches)
    """
    return jax.vmap(make_member_step(method, module, hp, tx, train_mode=train_mode, augment=augment))


# --------------------------------------------------------------------------- #
# the loop
# --------------------------------------------------------------------------- #


@dataclass
class SweepResult:
    """What :func:`fit_sweep` returns.

    Attributes:
      state: the ``K`` final ``TrainState``s stacked (every leaf has a leading axis ``K``).
      members: per member, its full settings: ``lr``, ``seed`` and every swept field.
      hparams: per member, its validated ``Hparams``.
      history: ``history[k]`` is member ``k``'s per-epoch records, as
        :attr:`jaxbias.train.FitResult.history` (plus ``member`` and ``settings``).
      losses: ``(K, T)`` per-step training losses of the steps run in this call.
      resumed_from: the epoch a resumed sweep restarted from, else ``None``.
      traces: how often the vmapped step was traced (1: compiled once).
    """

    state: TrainState
    members: list[dict[str, Any]]
    hparams: list[Any]
    history: list[list[dict[str, Any]]]
    losses: np.ndarray
    resumed_from: int | None
    traces: int

    def __len__(self) -> int:
        return len(self.members)

    def member_state(self, i: int) -> TrainState:
        """Member ``i``'s ``TrainState`` (unstacked)."""
        if not -len(self) <= i < len(self):
            raise ValueError(f"member index {i} is out of range for a sweep of {len(self)} members")
        return unstack(self.state, i)

    def member_params(self, i: int) -> Params:
        """Member ``i``'s trained parameters."""
        return self.member_state(i).params

    def member_model_state(self, i: int) -> ModelState:
        """Member ``i``'s non-trainable collections (batch-norm statistics)."""
        return self.member_state(i).model_state


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    """Non-finite metrics become ``None`` (strict JSON) and mark the member as diverged."""
    out, diverged = {}, False
    for k, v in record.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k], diverged = None, True
        else:
            out[k] = v
    if diverged:
        out["diverged"] = True
    return out


def fit_sweep(
    *,
    module: flax.linen.Module,
    method: ModuleType,
    hp: Any = None,
    members: Sequence[Mapping[str, Any]],
    train: Batch,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    decay_every: int | None = 20,
    decay_factor: float = 0.1,
    decoupled: bool = False,
    optimizer: Callable[[Any], optax.GradientTransformation] | None = None,
    trainable: Sequence[str] | None = None,
    seed: int = 0,
    method_state: Any = None,
    method_states: Sequence[Any] | None = None,
    eval_sets: Mapping[str, Batch] | None = None,
    eval_every: int = 1,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    drop_last: bool = True,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    log: Callable[[list[dict[str, Any]]], None] | None = None,
    init_params: tuple[Params, ModelState] | None = None,
    train_mode: bool = True,
    vectorize: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    augment: Callable[[jax.Array, Batch], Batch] | None = None,
    feed: str = "auto",
) -> SweepResult:
    """Train ``len(members)`` models in one compiled step; member ``k`` reproduces a :func:`~jaxbias.train.fit` run.

    Member ``k`` is ``fit(module=module, method=method, hp=replace(hp,
    **fields_k), tx=make_optimizer(lr=lr_k, weight_decay=..., steps_per_epoch=S,
    decay_every=..., ...), seed=seed_k, ...)`` with ``S`` the steps per epoch
    (a custom ``optimizer(lr)`` replaces ``make_optimizer``; ``trainable``
    wraps it in :func:`~jaxbias.train.freeze`). The step is traced once.

    ``vectorize=True`` runs the members as one ``jax.vmap``-ed step over the
    stacked states. Its results equal ``fit``'s up to the order of float
    reductions in batched kernels, which Adam can amplify where a gradient is
    pure rounding noise (e.g. a convolution bias followed by batch-norm).
    ``vectorize=False`` lets the members take turns on one compiled
    single-model step (hyperparameters as arguments): still one compilation,
    results equal to ``fit``'s, at about vmap's speed on XLA:CPU.

    Args:
      module, method, train, epochs, batch_size, eval_sets, eval_every,
        drop_last, progress, config, init_params, train_mode: as for ``fit``.
      augment: transforms each member's batch inside the step (:class:`jaxbias.training.augment.Augment`).
      hp: the base ``Hparams`` (default ``method.Hparams()``).
      members: one mapping per member with any of ``"lr"``, ``"seed"`` and
        numeric ``hp`` fields; missing keys take ``lr``, ``seed`` and ``hp``'s
        values. See :func:`grid` and :func:`zipped`.
      lr, weight_decay, decay_every, decay_factor, decoupled: the default
        optimiser (:func:`schedule_optimizer`).
      optimizer: ``lr ↦ GradientTransformation``, traceable in ``lr``
        (e.g. ``optax.adam``); replaces the default optimiser.
      trainable: train only these top-level parameter groups.
      seed: the seed of members that name none.
      method_state: one fitted method state shared by all members (ClArC CAVs);
        default ``method.init`` on the first member's starting model and ``train``.
      method_states: one method state per member (same structure), instead.
      workdir: checkpoints of the stacked state after every epoch and
        ``metrics.jsonl`` with one row per member and epoch.
      resume: continue from the newest checkpoint in ``workdir``; the members
        must be the same as those that wrote it.
      log: called after each epoch with the ``K`` member records.
      vectorize: vmap the members (default) or let them take turns.
      mesh: a :func:`jaxbias.training.parallel.make_sweep_mesh`: the stacked members
        are split over its ``members`` axis (their count must divide by it),
        each member's batch over its ``data`` axis; with several processes
        the members of all hosts form one sweep. Needs ``vectorize=True``.
      feed: ``"auto"``, ``"device"`` or ``"host"`` (:mod:`jaxbias.training.loop`).

    Returns:
      :class:`SweepResult`.

    Raises:
      ValueError: empty ``members``, an unknown key, a non-numeric value, a
        field that cannot be swept, an invalid member value (the method's own
        validation), ``method_states`` of the wrong length.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be ≥ 0, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be ≥ 1, got {eval_every}")
    if method_state is not None and method_states is not None:
        raise ValueError("pass method_state (shared by all members) or method_states (one per member), not both")
    if mesh is not None and not vectorize:
        raise ValueError("a sweep on a mesh splits the stacked members over devices: it needs vectorize=True")
    if hp is None:
        hp = method.Hparams()
    n = loop.check_train(train, getattr(module, "num_classes", None))
    if drop_last and n < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the training set ({n} samples) with drop_last")
    loop.choose_feed(feed, train)
    plan = _plan(method, hp, members, lr=lr, seed=seed)
    k_members = len(plan.settings)
    layout = Layout() if mesh is None else Layout.members(mesh)
    layout.check(batch_size=batch_size, members=k_members)
    if method_states is not None and (isinstance(method_states, (str, bytes)) or len(method_states) != k_members):
        raise ValueError(f"method_states has {len(method_states)} entries but there are {k_members} members")
    steps_per_epoch = num_batches(n, batch_size, drop_last)
    if optimizer is None:
        optimizer = schedule_optimizer(weight_decay=weight_decay, steps_per_epoch=steps_per_epoch,
                                       decay_every=decay_every, decay_factor=decay_factor, decoupled=decoupled)
    elif not callable(optimizer):
        raise ValueError(f"optimizer must be a function lr -> optax.GradientTransformation; got {optimizer!r}")

    # per member: fit's keys, parameters (initialised as fit does, eagerly) and state
    keys = {}
    for s in plan.settings:
        if s["seed"] not in keys:
            keys[s["seed"]] = jax.random.split(jax.random.key(s["seed"]), 3)
    inits = {}

    def variables_of(seed):
        if init_params is not None:
            return init_params
        if seed not in inits:
            inits[seed] = models_lib.init(module, keys[seed][0], jnp.asarray(train.x[:1]))
        return inits[seed]

    if method_states is None:
        if method_state is None:
            method_state = initial_method_state(method, module, plan.hparams[0],
                                                variables_of(plan.settings[0]["seed"]), train)
        method_states = [method_state] * k_members
    states = []
    for i, s in enumerate(plan.settings):
        _, _, step_key = keys[s["seed"]]
        params, model_state = variables_of(s["seed"])
        tx_i = inject_lr(optimizer, s["lr"])
        if trainable is not None:
            tx_i = freeze(tx_i, params, trainable)
        states.append(create_train_state(params, model_state, tx_i, key=step_key, method_state=method_states[i]))
    state = stack(states)  # fresh arrays: donation never deletes the caller's
    del states
    inits.clear()  # the unstacked copies: only the stacked state lives on
    tx = inject_lr(optimizer, plan.settings[0]["lr"])  # its update reads each member's lr from the state
    if trainable is not None:
        tx = freeze(tx, unstack(state.params, 0), trainable)

    # one batch's rows only: a streamed training set (LazyImages) decodes just these
    _check_sweepable(method, module, plan, unstack(state, 0), _gather(train, np.arange(batch_size) % n),
                     train_mode)

    traces = [0]
    step_impl = (make_sweep_step if vectorize else make_member_step)(method, module, hp, tx, train_mode=train_mode,
                                                                      augment=augment)

    def counted(states, batch, values):
        traces[0] += 1  # runs only while tracing: a second trace would mean a recompilation
        return step_impl(states, values, batch)

    values = {f: jnp.asarray(v) for f, v in plan.values.items()}
    data_keys = [keys[s["seed"]][1] for s in plan.settings]
    if vectorize:
        lanes = [loop.Lane(state, values, jax.random.wrap_key_data(jnp.stack([jax.random.key_data(k)
                                                                                   for k in data_keys])))]
        pack, unpack = (lambda states: states[0]), (lambda st: [st])
    else:  # one lane per member, each donated to its own step
        lanes = [loop.Lane(unstack(state, i), {f: v[i] for f, v in values.items()}, data_keys[i])
                 for i in range(k_members)]
        pack, unpack = stack, (lambda st: [unstack(st, i) for i in range(k_members)])
    predict = make_predict(module) if eval_sets else None

    def records(epoch, sums, steps, lanes_now, seconds):
        do_eval = bool(eval_sets) and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)
        if vectorize:
            per_member = [{k: v[i] for k, v in sums[0].items()} for i in range(k_members)]
            st = lanes_now[0].state
            steps_now = to_host(st.step)
            if do_eval:  # every member's variables to the host once, then one member at a time
                variables = to_host((st.params, st.model_state))
                evals_of = functools.partial(unstack, variables)
        else:
            per_member = sums
            steps_now = [to_host(ln.state.step) for ln in lanes_now]
            evals_of = lambda i: (lanes_now[i].state.params, lanes_now[i].state.model_state)  # noqa: E731
        out = []
        for i in range(k_members):
            rec: dict[str, Any] = {"epoch": epoch + 1, "member": i, "settings": plan.settings[i],
                                   "step": int(steps_now[i])}
            rec.update({k: float(v) / steps for k, v in per_member[i].items()})
            rec["seconds"] = seconds
            if do_eval:
                rec["eval"] = evaluate(predict, *evals_of(i), eval_sets)
            out.append(_clean(rec))
        return out

    meta = {"method": method.__name__.rsplit(".", 1)[-1], "hparams": hp_dict(hp),
            "members": plan.settings, "batch_size": batch_size, **dict(config or {})}
    res = loop.run_epochs(
        step=counted, lanes=lanes, train=train, epochs=epochs, batch_size=batch_size, drop_last=drop_last, feed=feed,
        layout=layout, records=records, pack=pack, unpack=unpack,
        store=None if workdir is None else Store(workdir), resume=resume, meta=meta,
        must_match={"members": plan.settings}, progress=progress, desc=f" ({k_members} members)", log=log,
    )
    history: list[list[dict[str, Any]]] = [[] for _ in range(k_members)]
    for r in res.rows:
        if 0 <= r.get("member", -1) < k_members:
            history[r["member"]].append(r)
    final = pack([ln.state for ln in res.lanes])
    losses = (np.concatenate([to_host(ls) for ls in res.losses], axis=0).T if res.losses
              else np.zeros((k_members, 0), np.float32))
    return SweepResult(state=final, members=plan.settings, hparams=plan.hparams, history=history,
                       losses=losses, resumed_from=res.resumed_from, traces=traces[0])


def _gather(train: Batch, idx: np.ndarray) -> Batch:
    return Batch(*(None if a is None else jnp.asarray(a[idx]) for a in train))
