"""RR-ClArC: penalise the model's latent gradient along the artifact's CAV.

Dreyer, Pahde, Anders, Samek, Lapuschkin. *From hope to safety: unlearning
biases of deep models via gradient penalization in latent space.* AAAI 2024
(SPEC §2).

Fine-tuning loss::

    L = (1/B) Σ_n CE(f(x_n), y_n) + λ · (1/B') Σ_n s_n²,
    s_n = ∇_a [m_n · f̃(a(x_n))] · h

with ``a`` the activation of layer ``hp.layer``, ``f̃`` the rest of the network
(logits, or log-probabilities), ``h`` the unit CAV and ``m_n`` the choice of
protected outputs. For a conv layer ``∇_a`` (``H×W×C``) is averaged over the
spatial positions before the dot product.

Symbols → arguments:

=============  ============================================================
paper          here
=============  ============================================================
``a(x)``       ``acts[hp.layer]`` (``(B, C)`` or ``(B, H, W, C)``)
``h``          ``state.cav`` (unit, ``(C,)``), fitted by :func:`init`
``m``          ``hp.criterion`` (and ``hp.classes``), see below
``λ``          ``hp.lam``
``f̃``          logits, or log-probabilities for the ``"logprobs*"`` criteria
``B'``         samples that are penalised (all, or those whose label is in
               ``hp.classes``)
=============  ============================================================

``criterion``: ``"random"`` (``m ∈ {±1}^k`` drawn per sample from the step's
key — the published default), ``"all"`` (``m = 1``), ``"target"`` (one-hot of
the sample's label), ``"max"`` (one-hot of the predicted class), ``"logprobs"``
(the mean over the classes of ``log(softmax_k + 1e-5)``, as the RR-ClArC
release protects it: ``m = 1/k`` on ``f̃ = log(ŷ + 1e-5)``),
``"logprobs_sum"`` (``Σ_k log softmax_k``: ``m = 1`` on the log-softmax; the
same direction, ``s`` k times larger, so the penalty ≈ k² times the released
one and λ means something else), ``"class"`` (``m`` = indicator of
``hp.classes``). With ``hp.classes`` set, only samples whose label is in it
are penalised (class-specific correction). ``form``: ``"l2"`` (``s²``, the
paper), ``"l1"`` (``|s|``) or ``"cosine"`` (``cos(∇_a, h)²``, scale-free).

Cost: ``s`` is a directional derivative, so the ``l2``/``l1`` forms take one
forward-mode JVP of the network above ``hp.layer`` along ``h`` (the tangent is
``h/(H·W)`` at every position — the spatial mean of the gradient dotted with
``h``), computed in the same pass as the logits; no latent gradient is
materialised. The ``cosine`` form needs the gradient's norm and uses one VJP.
The JVP gives ``Σ_{n'} ∂(m_n·f̃_n)/∂a_{n'} · h`` and the gradient form gives
``Σ_{n'} ∂(m_{n'}·f̃_{n'})/∂a_n · h``; they are equal whenever samples do not
interact above the layer — always for layers after the last batch-norm (the
paper's setting: the last conv layer) and for batch-norm in evaluation mode.

Per-position sensitivities for TCAV: :func:`jaxbias.evaluation.latent_sensitivity`.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from jaxbias.methods import Kind, static
from jaxbias.concepts import check_layer
from jaxbias.methods._clarc import State, check_state
from jaxbias.methods._clarc import init as fit_init
from jaxbias.types import Aux, Batch, BoundModel, Params

Array = jax.Array

#: Corrects a trained model: ``init`` fits the CAV on it.
KIND = Kind(fits_on_model=True)

CRITERIA = ("random", "all", "target", "max", "logprobs", "logprobs_sum", "class")
FORMS = ("l2", "l1", "cosine")

__all__ = ["KIND", "CRITERIA", "FORMS", "Hparams", "State", "init", "loss", "penalty"]


@dataclass(frozen=True)
class Hparams:
    """RR-ClArC hyperparameters.

    Attributes:
      lam: penalty weight ``λ``.
      layer: layer of the CAV (the paper: the last conv layer; here ``"block4"``).
      criterion: protected outputs ``m`` (see the module docstring).
      classes: class-specific correction: penalise only samples with these
        labels (and, for ``criterion="class"``, protect these outputs).
      form: ``"l2"``, ``"l1"`` or ``"cosine"``.
      cav: CAV fitter (``jaxbias.concepts.fit_cav`` ``method``).
      cav_reg: its regularisation (``None``: the fitter's default).
      pool: spatial pooling of conv activations for the CAV (``"max"``/``"mean"``).
    """

    lam: float = 1.0
    layer: str = "block4"
    criterion: str = "random"
    classes: tuple[int, ...] = ()
    form: str = "l2"
    cav: str = "signal"
    cav_reg: float | None = static(None)  # the CAV fit's, before training
    pool: str = "max"

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}; got {self.criterion!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}; got {self.form!r}")
        if not (float(self.lam) >= 0):
            raise ValueError(f"lam must be a non-negative number; got {self.lam!r}")
        if self.criterion == "class" and not self.classes:
            raise ValueError('criterion="class" needs hp.classes, e.g. classes=(3,)')
        if any((not isinstance(c, int)) or c < 0 for c in self.classes):
            raise ValueError(f"classes must be non-negative ints; got {self.classes!r}")
        if self.pool not in ("max", "mean"):
            raise ValueError(f"pool must be 'max' or 'mean'; got {self.pool!r}")


#: Fit the CAV of ``hp.layer`` (``init(eval_model, params, data, *, hp, concept=None)``; ``data.bias``
#: or ``concept``: 1 = artifact). Shared with A-/P-ClArC.
init = fit_init


def _weights(logits: Array, labels: Array, key: Array, hp: Hparams) -> Array:
    """``m`` per sample, ``(B, k)``; never differentiated."""
    k = logits.shape[-1]
    if hp.criterion == "random":
        m = jax.random.rademacher(key, logits.shape, dtype=logits.dtype)
    elif hp.criterion in ("all", "logprobs_sum"):
        m = jnp.ones_like(logits)
    elif hp.criterion == "logprobs":
        m = jnp.full_like(logits, 1.0 / k)  # the mean over the classes
    elif hp.criterion == "target":
        m = jax.nn.one_hot(labels, k, dtype=logits.dtype)
    elif hp.criterion == "max":
        m = jax.nn.one_hot(jnp.argmax(logits, axis=-1), k, dtype=logits.dtype)
    else:  # "class"
        m = jnp.broadcast_to(jnp.zeros(k, logits.dtype).at[jnp.asarray(hp.classes)].set(1.0), logits.shape)
    return jax.lax.stop_gradient(m)


def _selected(labels: Array, hp: Hparams) -> Array:
    if not hp.classes:
        return jnp.ones(labels.shape, bool)
    return jnp.isin(labels, jnp.asarray(hp.classes))


def _outputs(logits: Array, hp: Hparams) -> Array:
    if hp.criterion == "logprobs":
        return jnp.log(jax.nn.softmax(logits) + 1e-5)
    return jax.nn.log_softmax(logits) if hp.criterion == "logprobs_sum" else logits


def _check_classes(k: int, hp: Hparams) -> None:
    if hp.classes and max(hp.classes) >= k:
        raise ValueError(f"hp.classes={hp.classes} names a class ≥ the model's {k} outputs")


def _forward(params, state: State, batch: Batch, key, model: BoundModel, hp: Hparams):
    """One pass: ``(ModelOutput, s, w)`` with ``s`` (``(B,)``) and ``w`` the per-sample penalty ``(B,)``."""
    if batch.x.shape[0] == 0:
        raise ValueError("batch.x is empty")
    shapes = jax.eval_shape(lambda p: model(p, batch.x), params)
    shape = check_layer(shapes.acts, hp.layer).shape
    check_state(state, shape[-1])
    _check_classes(shapes.logits.shape[-1], hp)
    h = state.cav.astype(jnp.float32)
    zeros = jnp.zeros(shape, jnp.float32)

    def run(p):
        out = model(params, batch.x, perturb={hp.layer: p})
        return _outputs(out.logits, hp), out

    if hp.form == "cosine":
        f_out, vjp_fn, out = jax.vjp(run, zeros, has_aux=True)
        m = _weights(out.logits, batch.y, key, hp)
        (g,) = vjp_fn(m)
        g = jnp.mean(g, axis=(1, 2)) if g.ndim == 4 else g  # (B, C)
        s = g @ h
        norm = jnp.sqrt(jnp.sum(g * g, axis=-1))
        cos = s / jnp.maximum(norm, 1e-12)
        w = cos**2
    else:
        spatial = shape[1] * shape[2] if len(shape) == 4 else 1
        tangent = jnp.broadcast_to(h / spatial, shape)
        f_out, df, out = jax.jvp(run, (zeros,), (tangent,), has_aux=True)
        m = _weights(out.logits, batch.y, key, hp)
        s = jnp.sum(m * df, axis=-1)
        w = s**2 if hp.form == "l2" else jnp.abs(s)
    return out, s, w


def penalty(params: Params, state: State, batch: Batch, key: Array, *, model: BoundModel, hp: Hparams) -> Array:
    """Per-sample penalty ``(B,)``: ``s_n²`` (or ``|s_n|``, ``cos²``); 0 for samples not selected by ``hp.classes``."""
    _, _, w = _forward(params, state, batch, key, model, hp)
    return jnp.where(_selected(batch.y, hp), w, 0.0)


def loss(params: Params, state: State, batch: Batch, key: Array, *, model: BoundModel, hp: Hparams) -> tuple[Array, Aux]:
    """``L = CE + λ · mean over selected samples of the penalty`` (see the module docstring).

    Returns:
      ``(L, Aux(metrics={"ce", "rr", "sens"}, state))``: ``rr`` the mean penalty
      (unweighted), ``sens`` the mean ``|s|`` over the selected samples.

    Example:
      >>> state = init(eval_model, params, Batch(x, y, bias=has_artifact), hp=hp)
      >>> value, aux = loss(params, state, batch, key, model=train_model, hp=hp)
    """
    out, s, w = _forward(params, state, batch, key, model, hp)
    sel = _selected(batch.y, hp)
    count = jnp.maximum(jnp.sum(sel), 1)
    rr = jnp.sum(jnp.where(sel, w, 0.0)) / count
    sens = jnp.sum(jnp.where(sel, jnp.abs(s), 0.0)) / count
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits, batch.y))
    return ce + hp.lam * rr, Aux(metrics={"ce": ce, "rr": rr, "sens": sens}, state=out.state)
