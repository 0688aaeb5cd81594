"""Tolerances derived from what a comparison computes, so that a test holds on every processor.

Float results differ between processor families because sums are taken in another order (SIMD
width, threads, ranks). The classical bound (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., section 3.1 and 4.2): a value computed with at most ``n`` successive
roundings of unit roundoff ``u`` lies within ``gamma(n) * M`` of the exact value, where
``M`` is the sum of the absolute values of the terms that made it (``gamma(n) = n u / (1 - n u)``).
Two computations of the same value in any two orders therefore differ by at most twice that. The
tests state ``n`` (the depth: how many roundings a term goes through on its way to the result)
and ``M`` (computed in the test from the same data, or bounded from above with the reason given).
"""
from __future__ import annotations

import math

import torch

FLOAT32 = 2.0 ** -24  # unit roundoff of IEEE single precision
FLOAT64 = 2.0 ** -53
UNIT = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float32: FLOAT32, torch.float64: FLOAT64}


def gamma(n: int, u: float = FLOAT32) -> float:
    """Higham's gamma_n: the relative error bound after ``n`` roundings of unit roundoff ``u``."""
    assert n * u < 1, (n, u)
    return n * u / (1 - n * u)


def bound(n: int, magnitude: float, u: float = FLOAT32) -> float:
    """How far one computation of a sum of terms whose absolute values add up to ``magnitude``,
    each rounded at most ``n`` times on its way, can be from the exact value."""
    return gamma(n, u) * float(magnitude)


def between_orders(n: int, magnitude: float, u: float = FLOAT32) -> float:
    """How far two computations of the same value, in two orders, can be from each other."""
    return 2 * bound(n, magnitude, u)


def kl_magnitude(num_classes: int, kl: float) -> float:
    """An upper bound of sum_c p_c (|log p_c| + |log q_c|) = H(p) + CE(p, q) = 2 H(p) + KL(p||q),
    the absolute size of the terms a KL divergence sums (H(p) <= log C)."""
    return 2 * math.log(num_classes) + abs(kl)


def apart(got, want, n: int, magnitude, u: float = FLOAT32) -> tuple[torch.Tensor, torch.Tensor]:
    """(|got - want|, ``between_orders(n, magnitude)``) elementwise in float64: numbers or tensors,
    ``magnitude`` (the size of what each element sums) broadcast against them."""
    diff = (torch.as_tensor(got, dtype=torch.float64) - torch.as_tensor(want, dtype=torch.float64)).abs()
    return diff, 2 * gamma(n, u) * torch.as_tensor(magnitude, dtype=torch.float64)


def within(got, want, n: int, magnitude, u: float = FLOAT32) -> bool:
    """``got`` within ``between_orders(n, magnitude)`` of ``want``, elementwise (see ``apart``)."""
    diff, tol = apart(got, want, n, magnitude, u)
    return bool((diff <= tol).all())


def assert_close(got: torch.Tensor, want: torch.Tensor, n: int, magnitude, u: float = FLOAT32,
                 msg: str = "") -> None:
    """As ``within``, saying by how much when it fails."""
    diff, tol = apart(got, want, n, magnitude, u)
    if not bool((diff <= tol).all()):
        raise AssertionError(f"{msg}: differs by {float(diff.max()):.3g}, bound {float(tol.max()):.3g}")


def assert_same_weights(wa: dict[str, torch.Tensor], wb: dict[str, torch.Tensor], n: int) -> None:
    """Two trainings that differ only in the order of their sums (ranks, micro-batches, nodes).
    Each weight is its initial value minus the learning rate times sums of gradient terms; in
    these short runs those terms stay within the tensor's own scale (``max |w|``), so that scale
    is the magnitude, and ``n`` counts the roundings along the widest sum (fan-in, batch, steps)."""
    assert wa.keys() == wb.keys()
    for k in wa:
        assert_close(wa[k], wb[k], n, float(wa[k].abs().max()), msg=k)


def _local_size(m: torch.nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(the absolute size of what each output of module ``m`` sums on input ``a``, the roundings
    it takes), or None for a module that computes exactly (ReLU, max-pooling, reshapes)."""
    import torch.nn.functional as F
    if isinstance(m, torch.nn.Conv2d):
        return F.conv2d(a.abs(), m.weight.abs(), None if m.bias is None else m.bias.abs(), m.stride, m.padding,
                        m.dilation, m.groups), m.in_channels // m.groups * math.prod(m.kernel_size) + 1
    if isinstance(m, torch.nn.Linear):
        return F.linear(a.abs(), m.weight.abs(), None if m.bias is None else m.bias.abs()), m.in_features + 1
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        shape = (1, -1) + (1,) * (a.dim() - 2)
        scale = (m.weight.abs() if m.affine else 1) / (m.running_var + m.eps).sqrt()
        shift = m.bias.abs() if m.affine else 0
        return (a.abs() + m.running_mean.abs().view(shape)) * scale.view(shape) + shift.view(shape), 4
    if isinstance(m, (torch.nn.modules.pooling._AdaptiveAvgPoolNd, torch.nn.modules.pooling._AvgPoolNd)):
        out = m.forward(a.abs())  # forward(): not through the hooks that called this
        return out, max(1, a[0, 0].numel() // out[0, 0].numel()) + 1
    return None


def logits_tolerance(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Elementwise: how far two float32 computations of ``model(x)`` in eval mode (other batch,
    threads or processor) can be apart, to first order. Each layer's float32 output is within
    ``gamma_k`` times the absolute size of what it sums (k: its fan-in, window or operations);
    that error reaches the logits through the layer's actual gradient, computed here in float64."""
    import copy
    net = copy.deepcopy(model).double().eval()
    for m in net.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    outs: list[torch.Tensor] = []
    sizes: list[torch.Tensor] = []

    def keep(m, inputs, output) -> None:
        local = _local_size(m, inputs[0].detach())
        if local is not None:
            outs.append(output)
            sizes.append(gamma(local[1]) * local[0])
    hooks = [m.register_forward_hook(keep) for m in net.modules() if not list(m.children())]
    try:
        with torch.enable_grad():
            logits = net(x.double().requires_grad_(True))  # a graph even for a frozen teacher
    finally:
        for h in hooks:
            h.remove()
    tol = torch.zeros_like(logits)
    for c in range(logits.shape[1]):  # samples are independent in eval mode: one pass a class
        grads = torch.autograd.grad(logits[:, c].sum(), outs, retain_graph=True)
        tol[:, c] = sum((g.abs() * size).flatten(1).sum(1) for g, size in zip(grads, sizes))
    return 2 * tol.detach()
