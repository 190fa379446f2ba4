"""LRP of any Linen or NNX network, its rules applied by intercepting its layers (no layer graph to write).

:func:`lrp_model` explains a logit of a Flax Linen module as it is — a bundled
network, a network of yours wrapped by :func:`jaxbias.models.from_linen`, an NNX
model wrapped by :func:`jaxbias.models.from_nnx` (its ``nnx.Conv`` / ``nnx.Linear``
/ ``nnx.BatchNorm`` layers intercepted through
:func:`jaxbias.models.adapters.intercept_nnx`) —
with the EpsilonPlusFlat composite of :mod:`jaxbias.explain.lrp` (SPEC §7):
the flat rule for the first linear layer, z⁺ for convolutions, ε for dense
layers, each batch-norm folded into the convolution or dense layer whose
output it normalises.

How: every ``nn.Conv`` / ``nn.Dense`` / ``nn.BatchNorm`` call is intercepted
(:func:`flax.linen.intercept_methods`) and its output ``z`` replaced by the
same value with the rule's gradient,

    ``y = sg(z) + (z_ρ − sg(z_ρ)) · sg(z / stab(z_ρ))``,

where ``z_ρ`` is the layer recomputed the rule's way (z⁺: positive weights on
positive inputs plus negative weights on negative inputs, and the positive
part of the bias; ε: the layer itself) and ``sg`` stops the gradient. The
gradient of the explained logit then carries ``R / z`` at every layer output:
relevance is the activation times that gradient, and everything between the
intercepted layers — ReLU, max and average pooling, means, reshapes, residual
additions — follows autodiff, which is the rule the composite gives them
(ReLU and reshapes pass relevance on; a mean or a sum splits it in proportion
to its inputs; max pooling gives it to the maximum). A batch-norm right after
a linear layer (its input is that layer's output) is folded: its output is
the folded layer's, recomputed from the linear layer's input. The first
linear layer's relevance is taken at its (folded) output from the gradient of
a zero probe added there, and its rule (flat) applied to it directly.

Elementwise functions other than ReLU (tanh, SiLU…) do not pass relevance
through unchanged under autodiff, and a product ``x · gate`` would send
relevance into the gate too: in a network they are plain function calls this
module cannot see, so write them as :class:`jaxbias.models.layers.Activation`
and :class:`~jaxbias.models.layers.Gate` modules (the bundled networks do),
which are intercepted: an activation passes relevance on unchanged, a gate
gives all of it to ``x``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbias.explain.lrp import RULES, target_onehot
from jaxbias.metrics import postprocess_mask
from jaxbias.models.adapters import FunctionTapped, intercept_nnx, nnx_replaced
from jaxbias.models.layers import Activation, Gate
from jaxbias.models.normalize import Normalized

Array = jax.Array
sg = jax.lax.stop_gradient

#: The layers the rules apply to (``jaxbias.models.conv.Conv`` is an ``nn.Conv``).
LINEAR = (nn.Conv, nn.Dense)

__all__ = ["LINEAR", "concept_masks", "concept_relevance", "lrp_model", "make_lrp_model", "supported"]


def supported(module: Any) -> bool:
    """Whether :func:`lrp_model` can explain ``module``: a Linen network, whose layers it intercepts, or an NNX
    model wrapped by :func:`jaxbias.models.from_nnx` (its layers are swapped in the copy each call merges) —
    not functions wrapped by ``from_functions``, which have no layers to apply rules to."""
    while isinstance(module, Normalized):  # a normalisation first: whether its network can be explained
        module = module.inner
    return isinstance(module, nn.Module) and not isinstance(module, FunctionTapped)


@dataclasses.dataclass(frozen=True)
class _Call:
    """One intercepted layer call, Linen or NNX: what the rules need to know of it."""

    kind: str  # "conv" | "dense" | "norm" | "activation" | "gate"
    path: str
    module: Any


def _kind(m: Any) -> str | None:
    if isinstance(m, (nn.Conv, nnx.Conv)):
        return "conv"
    if isinstance(m, (nn.Dense, nnx.Linear)):
        return "dense"
    if isinstance(m, (nn.BatchNorm, nnx.BatchNorm)):
        return "norm"
    if isinstance(m, Activation):
        return "activation"
    if isinstance(m, Gate):
        return "gate"
    return None


@contextlib.contextmanager
def _intercepting(handler: Callable[..., Array]) -> Iterator[None]:
    """Within the block, each call of a layer the rules know goes through ``handler(call, next_fun, args)``:
    Linen layers through :func:`flax.linen.intercept_methods`, an NNX model's through
    :func:`jaxbias.models.adapters.intercept_nnx`."""

    def linen(next_fun, args, kwargs, context):
        m = context.module
        kind = _kind(m)
        if context.method_name != "__call__" or kind is None or not m.path or kwargs:
            return next_fun(*args, **kwargs)  # not a layer of the network (a rule recomputing one, on its own)
        return handler(_Call(kind, "/".join(m.path), m), next_fun, args)

    def nnx_layer(next_fun, args, kwargs, path, m):
        kind = _kind(m)
        if kind is None or kwargs:
            return next_fun(*args, **kwargs)
        return handler(_Call(kind, path, m), next_fun, args)

    with nn.intercept_methods(linen), intercept_nnx(nnx_layer):
        yield


def _weights(call: _Call) -> tuple[Array, Array | None]:
    """A linear layer's kernel and bias (``None`` without one)."""
    m = call.module
    if isinstance(m, nn.Module):
        params = m.variables["params"]
        return params["kernel"], params.get("bias")
    bias = getattr(m, "bias", None)
    return m.kernel.get_value(), None if bias is None else bias.get_value()


def _norm_stats(call: _Call) -> tuple[Array, Array, Array, Array, float]:
    """A batch-norm's running mean and variance, scale, shift and ε (evaluation mode)."""
    m = call.module
    if isinstance(m, nn.Module):
        v = m.variables
        mean, var = v["batch_stats"]["mean"], v["batch_stats"]["var"]
        scale, shift = v["params"].get("scale"), v["params"].get("bias")
    else:
        mean, var = m.mean.get_value(), m.var.get_value()
        scale, shift = (None if p is None else p.get_value() for p in (m.scale, m.bias))
    scale = jnp.ones_like(mean) if scale is None else scale
    shift = jnp.zeros_like(mean) if shift is None else shift
    return mean, var, scale, shift, m.epsilon


Linear = Callable[[Array, "Array | None", Array], Array]  # (kernel, bias, input) -> the layer's output


def _recompute(call: _Call) -> Linear:
    """The layer as a function of other weights: ``(kernel, bias, t) ->`` its output with them (bias ``None``:
    none), its strides, padding and dilation kept."""
    m = call.module
    if isinstance(m, nn.Module):
        layer = m.clone(parent=None, use_bias=True)

        def linen(kernel, bias, t):
            params = {"kernel": kernel, "bias": jnp.zeros(kernel.shape[-1], kernel.dtype) if bias is None else bias}
            return layer.apply({"params": params}, t)

        return linen
    has_bias = getattr(m, "bias", None) is not None

    def nnx_layer(kernel, bias, t):
        values = {"kernel": kernel, **({"bias": jnp.zeros(kernel.shape[-1], kernel.dtype)} if has_bias else {})}
        out = nnx_replaced(m, values)(t)
        return out if bias is None else out + bias

    return nnx_layer


def _stab(z: Array, eps: float) -> Array:
    return z + eps * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What one trace of the network finds: its linear layers' kinds, which batch-norm folds which linear layer,
    and where the first linear layer's relevance is read."""

    kinds: Mapping[str, str]
    folds: Mapping[str, str]
    first: str
    probe_at: str
    probe_shape: tuple[int, ...]


def _forward(module: nn.Module, variables: Mapping[str, Any], x: Array, edit: Mapping[str, Any] | None,
             with_acts: bool = False):
    out = module.apply(dict(variables), x, train=False, **({"edit": dict(edit)} if edit else {}))
    if with_acts:
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
            raise ValueError(f"{type(module).__name__} returns no activations: LRP from a layer needs a network "
                             "returning (logits, acts) (a bundled one, or one wrapped by jaxbias.models.from_linen)")
        return out
    return out[0] if isinstance(out, tuple) else out


def _plan(module: nn.Module, variables: Mapping[str, Any], x: jax.ShapeDtypeStruct,
          edit: Mapping[str, Any] | None) -> _Plan:
    kinds: dict[str, str] = {}
    outputs: list[tuple[Any, str]] = []  # (output, linear path), held so that identity tests stay valid
    folds: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def record(call: _Call, next_fun, args):
        out = next_fun(*args)
        if call.kind in ("conv", "dense"):
            if call.path in kinds:
                raise ValueError(f"layer {call.path!r} is called more than once in one forward pass: LRP needs "
                                 "each linear layer once (a shared layer has no single relevance)")
            kinds[call.path] = call.kind
            outputs.append((out, call.path))
            shapes[call.path] = tuple(out.shape)
        elif call.kind == "norm" and args:
            source = next((p for o, p in outputs if o is args[0]), None)
            if source is not None:
                folds[call.path] = source
                shapes[call.path] = tuple(out.shape)
        return out

    def trace(x):
        with _intercepting(record):
            return _forward(module, variables, x, edit)

    logits = jax.eval_shape(trace, x)
    if len(logits.shape) != 2:
        raise ValueError(f"{type(module).__name__} returns shape {tuple(logits.shape)}; LRP explains logits (B, k)")
    if not outputs:
        raise ValueError(f"{type(module).__name__} calls no nn.Conv or nn.Dense (nnx.Conv or nnx.Linear): LRP "
                         "has no layer to apply its rules to")
    first = outputs[0][1]
    probe_at = next((bn for bn, lin in folds.items() if lin == first), first)
    return _Plan(kinds, folds, first, probe_at, (1, *shapes[probe_at][1:]))


def _rule_output(linear: Linear, kernel: Array, bias: Array | None, a: Array, rule: str, zplus_bias: bool) -> Array:
    """``z_ρ``: the layer recomputed the rule's way on its input ``a``."""
    if rule == "epsilon":
        return linear(kernel, bias, a)
    b = None if (bias is None or not zplus_bias) else jnp.maximum(bias, 0)
    return (linear(jnp.maximum(kernel, 0), b, jnp.maximum(a, 0))
            + linear(jnp.minimum(kernel, 0), None, jnp.minimum(a, 0)))


def _relevance_in(linear: Linear, kernel: Array, bias: Array | None, a: Array, r: Array, rule: str, eps: float,
                  zplus_bias: bool) -> Array:
    """The relevance of the input ``a`` of a linear layer whose output holds ``r`` (the first layer's rule)."""
    if rule == "flat":
        n, vjp = jax.vjp(lambda t: linear(jnp.ones_like(kernel), None, t), jnp.ones_like(a))
        return vjp(r / jnp.maximum(n, eps))[0]
    z, vjp = jax.vjp(lambda t: _rule_output(linear, kernel, bias, t, rule, zplus_bias), a)
    s = r / (z + eps) if rule == "zplus" else r / _stab(z, eps)
    return a * vjp(s)[0]


def _fold(kernel: Array, bias: Array | None, norm: _Call) -> tuple[Array, Array]:
    """``W·k``, ``(b − mean)·k + β`` with ``k = γ / sqrt(var + ε)``: the linear layer and the batch-norm in one."""
    mean, var, scale, shift, eps = _norm_stats(norm)
    k = scale / jnp.sqrt(var + eps)
    b = jnp.zeros_like(mean) if bias is None else bias
    return kernel * k, (b - mean) * k + shift


def lrp_model(module: nn.Module, variables: Mapping[str, Any], x: Array, *, target=None, layer: str | None = None,
              start: Array | Callable[[Array], Array] | None = None, cav: Array | None = None,
              edit: Mapping[str, Callable[[Array], Array]] | None = None, epsilon: float = 1e-6,
              first: str = "flat", conv: str = "zplus", dense: str = "epsilon", zplus_bias: bool = True) -> Array:
    """Relevance of the ``target`` logit for every input element of ``x`` (its shape), EpsilonPlusFlat by default.

    From a layer instead of a logit (concept-conditioned LRP): with ``layer`` (a name in the network's ``acts``)
    the relevance starts there as ``start`` — an array of the layer's shape, or a function of its activations
    ``a`` — or, with ``cav``, as the activations weighted by the concept's direction, ``a ⊙ cav`` along the
    channel axis (summed, the activation's projection on the CAV: where the network sees the concept), and is
    propagated to the input by the same rules (:func:`concept_relevance`, :func:`concept_masks`).

    A model corrected at inference (P-ClArC's projection) is explained with its ``edit``: the layers' outputs
    replaced as in its forward pass (``{layer: function}``, :meth:`jaxbias.runs.Run.edits`). An edit is a
    plain function of the activations: relevance passes it by its gradient, which for P-ClArC's affine
    projection is the ε rule of that linear map (ε → 0) — as a forward hook under zennit does.

    Args:
      module: a Linen module called ``module.apply(variables, x, train=False)`` returning the logits or
        ``(logits, acts)`` (every bundled network, :func:`jaxbias.models.from_linen`'s wrapper), or an NNX model
        wrapped by :func:`jaxbias.models.from_nnx` (its ``nnx.Conv``/``nnx.Linear``/``nnx.BatchNorm`` layers).
      variables: ``{"params": ..., "batch_stats": ...}`` (batch-norm in evaluation mode).
      x: a batch of inputs.
      target: class per sample ``(B,)``, one class for all, or ``None`` (the predicted class).
      layer, start, cav: where and with what the relevance starts instead of the logit (above).
      edit: ``{layer: function}`` applied to those layers' outputs in the explained forward pass.
      epsilon, first, conv, dense, zplus_bias: as :func:`jaxbias.explain.lrp` (``first`` also ``"flat"``;
        ``conv`` and ``dense`` ``"zplus"`` or ``"epsilon"``).

    Returns:
      ``(B, ...)`` relevance; with zero biases (or ``zplus_bias=False`` and no ε-rule biases) and ``ε → 0`` it
      sums to the explained logit per sample.
    """
    for name, rule, allowed in (("first", first, RULES), ("conv", conv, ("zplus", "epsilon")),
                                ("dense", dense, ("zplus", "epsilon"))):
        if rule not in allowed:
            raise ValueError(f"{name} must be one of {allowed}; got {rule!r}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0; got {epsilon}")
    if layer is None and (start is not None or cav is not None):
        raise ValueError("start= and cav= set the relevance at a layer: name it with layer=")
    if layer is not None and (start is None) == (cav is None):
        raise ValueError(f"layer={layer!r}: give the relevance it starts with, start= (an array or a function of "
                         "the activations) or cav= (the activations along a concept's direction), not both")
    if edit is not None and not (isinstance(edit, Mapping) and all(callable(f) for f in edit.values())):
        raise ValueError(f"edit must map layer names to functions of their activations; got {edit!r}")
    x = jnp.asarray(x)
    plan = _plan(module, variables, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype), edit)

    def rule_of(path: str) -> str:
        return conv if plan.kinds[path] == "conv" else dense

    def modified(z: Array, z_rho: Array, rule: str) -> Array:
        ratio = z / (z_rho + epsilon) if rule == "zplus" else z / _stab(z_rho, epsilon)
        return sg(z) + (z_rho - sg(z_rho)) * sg(ratio)

    recompute: dict[str, Linear] = {}  # the first layer as a function of its weights, out of the trace below

    def explained(probe: Array):
        seen: dict[str, Any] = {}

        def rules(call: _Call, next_fun, args):
            z = next_fun(*args)
            if call.kind == "gate":  # x · gate: all relevance to x (dy/dx = gate), none into the gate's branch
                x_in, gate = args
                return sg(z) + (x_in - sg(x_in)) * sg(gate)
            if call.kind == "activation":  # relevance passes on unchanged: R_in = a · z/a · G = R_out (0 at a = 0)
                a = args[0]
                return sg(z) + (a - sg(a)) * sg(jnp.where(a == 0, 0.0, z / jnp.where(a == 0, 1.0, a)))
            path = call.path
            if call.kind in ("conv", "dense"):
                kernel, bias = _weights(call)
                linear = _recompute(call)
                if path == plan.first:
                    seen["first"], recompute["first"] = (args[0], kernel, bias), linear
                if path in plan.folds.values():  # its batch-norm applies the rule, to the folded layer
                    seen[path] = (args[0], kernel, bias, linear)
                    return z
                if path == plan.probe_at:
                    seen["z"] = z
                    return z + probe
                return modified(z, _rule_output(linear, kernel, bias, args[0], rule_of(path), zplus_bias),
                                rule_of(path))
            source = plan.folds.get(path)
            if source is None:  # a batch-norm on its own: an affine layer, the ε rule
                return modified(z, z, "epsilon")
            a, kernel, bias, linear = seen[source]
            kernel, bias = _fold(kernel, bias, call)
            if path == plan.probe_at:
                seen["first"] = (a, kernel, bias)
                seen["z"] = z
                return z + probe
            rule = rule_of(source)
            return modified(z, _rule_output(linear, kernel, bias, a, rule, zplus_bias), rule)

        with _intercepting(rules):
            if layer is None:
                logits = _forward(module, variables, x, edit)
                return jnp.sum(logits * sg(target_onehot(logits, target))), (seen["first"], seen["z"])
            _, acts = _forward(module, variables, x, edit, with_acts=True)
        if layer not in acts:
            raise ValueError(f"layer={layer!r} is not an activation of {type(module).__name__}; it has "
                             f"{sorted(acts)}")
        a = acts[layer]
        r = _start(a, start, cav)
        # the gradient at the layer is R / a, so that activation × gradient is R there (0 where a = 0)
        safe = jnp.where(a == 0, 1.0, a)
        return jnp.sum(a * sg(jnp.where(a == 0, 0.0, r / safe))), (seen["first"], seen["z"])

    probe = jnp.zeros((x.shape[0], *plan.probe_shape[1:]), x.dtype)
    g, ((a, kernel, bias), z) = jax.grad(explained, has_aux=True)(probe)
    r = _relevance_in(recompute["first"], kernel, bias, a, z * g, first, epsilon, zplus_bias)
    if r.shape != x.shape:  # the first layer read a reshaped input (a flattened image): relevance per element
        if r.size != x.size:
            raise ValueError(f"the first linear layer {plan.first!r} reads an input of shape {tuple(a.shape)}, not "
                             f"the network's input {tuple(x.shape)} (reshaped): relevance cannot be mapped back")
        r = r.reshape(x.shape)
    return r


def _start(a: Array, start: Any, cav: Any) -> Array:
    """The relevance a layer starts with: ``start`` (an array, or a function of the activations) or ``a ⊙ cav``."""
    a = sg(a)
    if cav is not None:
        cav = jnp.asarray(cav, a.dtype)
        if cav.shape != (a.shape[-1],):
            raise ValueError(f"cav has shape {tuple(cav.shape)}; the layer's activations {tuple(a.shape)} need "
                             f"({a.shape[-1]},), one weight per channel")
        return a * cav
    r = start(a) if callable(start) else jnp.asarray(start, a.dtype)
    if r.shape != a.shape:
        raise ValueError(f"start relevance has shape {tuple(r.shape)}; the layer's activations are {tuple(a.shape)}")
    return r


def concept_relevance(module: nn.Module, variables: Mapping[str, Any], x: Array, *, layer: str, cav: Array,
                      **kwargs) -> Array:
    """Where in each input the network sees a concept: LRP from ``layer``, started at the activations along the
    concept's direction ``cav`` (a CAV fitted there, e.g. :func:`jaxbias.concepts.fit_cav`), to the input."""
    return lrp_model(module, variables, x, layer=layer, cav=cav, **kwargs)


def concept_masks(relevance: Array, *, sigma: float = 2.0, low: float = 0.1, high: float = 0.3) -> Any:
    """Binary masks of where a concept sits, from :func:`concept_relevance` maps ``(B, H, W, C)``: the positive
    relevance summed over channels, post-processed as the RR-ClArC release does (threshold ``low``·max, Gaussian
    blur ``sigma`` px, threshold ``high``·max; :func:`jaxbias.metrics.postprocess_mask`) — the artifact masks RRR
    (and targeted noise) train with, for images no mask was drawn for. ``(B, H, W)`` bool."""
    heat = np.maximum(np.asarray(relevance, np.float64).sum(-1), 0.0)
    return postprocess_mask(heat, low=low, sigma=sigma, high=high)


def make_lrp_model(module: nn.Module, variables: Mapping[str, Any], **kwargs) -> Callable[..., Array]:
    """``fn(x, target=None)``: :func:`lrp_model` of the module with these variables, compiled once per shape; the
    variables are an argument of the compiled program, not constants folded into it."""
    compiled = jax.jit(lambda v, x, target: lrp_model(module, v, x, target=target, **kwargs))
    variables = dict(variables)

    def fn(x, target=None):
        return compiled(variables, x, target)

    return fn
