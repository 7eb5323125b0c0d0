"""Is a model batch-independent? Measure it in training mode and name the modules that mix samples.

    report = check_batch_independence(model, torch.randn(2, 3, 64, 64))
    report.independent      # False for a BN model
    report.culprits         # ['bn1', 'layer1.0.bn1', ...]
    print(report)

Sample i is independent of the batch when f(x)[i] equals f(x[i:i+1]) and the gradient of
output[i] with respect to input[j] is zero for every j != i. Culprits are found three ways:
modules of any BN class (torch's _BatchNorm and its subclasses: SyncBatchNorm, timm's
BatchNormAct2d, groupnorm's BatchNorm and BatchRenorm) run with batch statistics; calls of a
batch-norm function in training (F.batch_norm, torch.batch_norm, aten's native_batch_norm, ...)
caught by a TorchFunctionMode and charged to the module that made them; and, for any other
mixing op, the innermost module whose output for sample i changes with the batch while its
input does not. Kept apart from the surgery (groupnorm.convert) to keep both small.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.overrides import TorchFunctionMode

__all__ = ["BatchIndependenceReport", "check_batch_independence", "load_model"]

# batch-norm functions and aten ops: they mix samples when called with training=True
_BN_FUNCTIONS = {
    "batch_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional",
    "_batch_norm_with_update",
    "_batch_norm_impl_index",
    "cudnn_batch_norm",
    "miopen_batch_norm",
}
_ALWAYS_MIXING = {"batch_norm_stats", "batch_norm_gather_stats", "batch_norm_gather_stats_with_counts"}  # SyncBN
_STOCHASTIC = ("DropPath", "DropBlock", "StochasticDepth")  # random masks: switched off during the check
_ROOT = "<model>"


@dataclass
class BatchIndependenceReport:
    """What :func:`check_batch_independence` measured.

    ``independent``: no sample's output or input gradient depends on the other samples.
    ``culprits``: qualified names of the modules that mix samples (``<model>`` for the top
    module), with the reason for each in ``reasons``.
    """

    independent: bool
    culprits: list[str]
    reasons: dict[str, str]
    samples: int
    output_difference: float  # max over samples of |f(x)[i] - f(x[i:i+1])| / max|f(x)[i]|
    gradient_leak: float  # max over samples of |d out[i] / d x[j != i]| / max|d out[i] / d x[i]|
    tolerance: float
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        verdict = "yes" if self.independent else "no"
        lines = [
            f"batch-independent: {verdict} (training mode, {self.samples} samples compared)",
            f"  output of a sample alone vs in the batch: max relative difference {self.output_difference:.1e} "
            f"(tolerance {self.tolerance:.0e})",
            f"  gradient of a sample's output w.r.t. the other samples' inputs: {self.gradient_leak:.1e} of its own",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        if self.culprits:
            lines.append(f"modules that mix samples ({len(self.culprits)}):")
            lines += [f"  {name}: {self.reasons[name]}" for name in self.culprits]
        elif not self.independent:
            lines.append("modules that mix samples: none identified (the mixing op is outside any module's own code)")
        return "\n".join(lines)


class _BatchNormCalls(TorchFunctionMode):
    """Charges every batch-norm call in training to the module running it."""

    def __init__(self, stack: list[str], found: dict[str, str]) -> None:
        super().__init__()
        self.stack, self.found = stack, found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "").split(".")[0]
        if name in _ALWAYS_MIXING or (name in _BN_FUNCTIONS and _training_flag(args, kwargs)):
            owner = self.stack[-1] if self.stack else _ROOT
            self.found.setdefault(owner, f"calls {name} with batch statistics (training=True)")
        return func(*args, **kwargs)


def _training_flag(args: tuple, kwargs: dict) -> bool:
    """The training argument of a batch-norm function: the keyword, else its first bool argument."""
    if "training" in kwargs:
        return bool(kwargs["training"])
    return next((a for a in args[1:] if isinstance(a, bool)), False)


def _tensors(out: object) -> Iterator[Tensor]:
    """Every tensor in a model output (tensor, tuple, list, dict, namedtuple), in order."""
    if isinstance(out, Tensor):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from _tensors(v)


def _batched(out: object, n: int) -> list[Tensor]:
    return [t for t in _tensors(out) if t.is_floating_point() and t.dim() > 0 and t.shape[0] == n]


def _rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| relative to the larger of max |a| and max |b| (inf where shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    if not b.numel():
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / torch.maximum(a.abs().max(), b.abs().max()).clamp_min(1e-12)).item()


def _first_rows(value: object) -> list[Tensor]:
    """Copies of the first row (sample 0) of every tensor in value: in-place ops later would change them."""
    return [t.detach()[:1].clone() if t.dim() else t.detach().clone() for t in _tensors(value)]


class _Recorder:
    """Forward hooks on every module: the call stack, BN modules in training, and each call's tensors."""

    def __init__(self, model: nn.Module, found: dict[str, str]) -> None:
        self.stack: list[str] = []
        self.found = found
        self.calls: list[tuple[str, list[Tensor], list[Tensor]]] | None = None  # (name, inputs, outputs)
        self.handles = []
        for name, m in model.named_modules():
            qual = name or _ROOT
            self.handles.append(m.register_forward_pre_hook(self._pre(qual)))
            self.handles.append(m.register_forward_hook(self._post(qual), always_call=True))

    def _pre(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.stack.append(name)
            if isinstance(module, _BatchNorm) and (module.training or module.running_mean is None):
                self.found.setdefault(name, f"{type(module).__name__} with batch statistics")
            if self.calls is not None:
                self.calls.append((name, _first_rows(args), []))

        return hook

    def _post(self, name: str):
        def hook(module: nn.Module, args: tuple, out: object) -> None:
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
            if self.calls is not None:
                for call in reversed(self.calls):  # this module's latest call still without outputs
                    if call[0] == name and not call[2]:
                        call[2].extend(_first_rows(out))
                        break

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _localize(batch_calls: list, single_calls: list, tol: float) -> dict[str, str]:
    """The innermost modules whose input for sample 0 is the same alone and in the batch, but not their output.

    Both lists hold (name, first rows of the inputs, first rows of the outputs) per module call, in order.
    """
    flagged: dict[str, str] = {}
    if len(batch_calls) != len(single_calls):
        return flagged
    for (name, b_in, b_out), (name2, s_in, s_out) in zip(batch_calls, single_calls, strict=True):
        if name != name2 or not b_out or len(b_in) != len(s_in) or len(b_out) != len(s_out):
            continue
        if any(_rel(b, s) > tol for b, s in zip(b_in, s_in, strict=True) if b.is_floating_point()):
            continue
        diff = max((_rel(b, s) for b, s in zip(b_out, s_out, strict=True) if b.is_floating_point()), default=0.0)
        if diff > 10 * tol:
            flagged[name] = f"its output for a sample changes with the other samples (by {diff:.1e})"

    # a module whose child is flagged is flagged because of it: keep the innermost
    def inside(child: str, parent: str) -> bool:
        return child != parent and (parent == _ROOT or child.startswith(f"{parent}."))

    return {n: r for n, r in flagged.items() if not any(inside(o, n) for o in flagged)}


def _gradient_leak(x: Tensor, outs: list[Tensor], i: int) -> float:
    """|d out[i] / d x[j != i]| relative to |d out[i] / d x[i]|, for a random projection of out[i]."""
    gen = torch.Generator(device=x.device).manual_seed(i)
    proj = sum(
        (o[i] * torch.randn(o[i].shape, generator=gen, device=o.device).to(o.dtype)).sum()
        for o in outs
        if o.requires_grad
    )
    (grad,) = torch.autograd.grad(proj, x, retain_graph=True, allow_unused=True)
    if grad is None:
        return 0.0
    own = grad[i].abs().max().item()
    others = torch.cat([grad[:i], grad[i + 1 :]]).abs().max().item()
    return others / own if own > 0 else (float("inf") if others > 0 else 0.0)


def check_batch_independence(
    model: nn.Module, example: Tensor, *, tolerance: float = 1e-4, max_samples: int = 4
) -> BatchIndependenceReport:
    """Whether, in training mode, sample i's output or input gradient depends on the other samples.

    Compares f(x)[i] with f(x[i:i+1]), and takes the gradient of a random projection of
    output[i] with respect to the whole input, for the first ``max_samples`` samples of
    ``example``. Dropout and drop-path modules are switched off (their masks are random, not a
    mixing of samples). The model's state is left as it was: buffers (BN running statistics,
    counters) and every module's training flag are restored; parameter gradients are not touched.

    Args:
        model: any nn.Module taking one tensor; outputs may be a tensor or a tuple, list or dict
            of them (those with the batch dim first are compared).
        example: an input batch (N >= 2, batch dim first), on the model's device.
        tolerance: relative difference above which a sample counts as dependent.
        max_samples: how many samples to check one by one.

    Returns:
        A :class:`BatchIndependenceReport`; ``print`` it for a summary.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"check_batch_independence: model must be an nn.Module; got {type(model).__name__}")
    if not isinstance(example, Tensor) or example.dim() < 1 or example.shape[0] < 2:
        got = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise ValueError(f"check_batch_independence: example must be a tensor batch with N >= 2 samples; got {got}")
    if not tolerance > 0 or max_samples < 1:
        raise ValueError(
            f"check_batch_independence: tolerance must be > 0 and max_samples >= 1; got {tolerance!r}, {max_samples!r}"
        )
    n = example.shape[0]
    samples = min(n, max_samples)
    flags = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def reset() -> None:  # every forward starts from the same running statistics
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])

    found: dict[str, str] = {}
    recorder = _Recorder(model, found)
    notes: list[str] = []
    output_difference = gradient_leak = 0.0
    try:
        model.train()
        for m in model.modules():
            if isinstance(m, _DropoutNd) or any(s in type(m).__name__ for s in _STOCHASTIC):
                m.eval()
        mode = _BatchNormCalls(recorder.stack, found)
        x = example.detach().clone()
        if x.is_floating_point():
            x.requires_grad_()
        recorder.calls = []
        with mode:
            outs = _batched(model(x), n)
        batch_calls, recorder.calls = recorder.calls, None
        recorder.stack.clear()
        if not outs:
            raise ValueError("check_batch_independence: the model's output has no floating tensor with the batch first")
        # gradients first: the single-sample forwards below reset buffers the backward may need
        if x.requires_grad and any(o.requires_grad for o in outs):
            for i in range(samples):
                gradient_leak = max(gradient_leak, _gradient_leak(x, outs, i))
        localized: dict[str, str] = {}
        for i in range(samples):
            reset()
            recorder.calls = [] if i == 0 else None
            try:
                with mode, torch.no_grad():
                    alone = _batched(model(example[i : i + 1]), 1)
                output_difference = max(
                    output_difference, *(_rel(o[i : i + 1], a) for o, a in zip(outs, alone, strict=False))
                )
            except (RuntimeError, ValueError) as e:  # e.g. BN with one value per channel
                output_difference = float("inf")
                notes.append(f"sample {i} alone fails: {str(e).splitlines()[0]}")
            finally:
                recorder.stack.clear()
            if i == 0 and recorder.calls:
                localized = _localize(batch_calls, recorder.calls, tolerance)
            recorder.calls = None
        if not x.requires_grad:
            notes.append("the input is not floating point: input gradients not checked")
    finally:
        recorder.remove()
        reset()
        for m, training in flags.items():
            m.training = training
    independent = output_difference <= tolerance and gradient_leak <= tolerance
    for name, reason in localized.items():
        found.setdefault(name, reason)
    order = {name or _ROOT: k for k, (name, _) in enumerate(model.named_modules())}
    culprits = sorted(found, key=lambda name: order.get(name, -1))
    return BatchIndependenceReport(
        independent, culprits, found, samples, output_difference, gradient_leak, tolerance, notes
    )


def load_model(name: str) -> nn.Module:
    """A model by name: ``module:attr`` (a module, or a callable returning one), else torchvision's, else timm's.

    Built without pretrained weights (nothing is downloaded).
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load {name!r}: {e}") from None
        model = obj if isinstance(obj, nn.Module) else obj() if callable(obj) else obj
        if not isinstance(model, nn.Module):
            raise ValueError(f"{name!r} is a {type(model).__name__}, not an nn.Module or a callable returning one")
        return model
    import torchvision

    if name in torchvision.models.list_models():
        return torchvision.models.get_model(name, weights=None)
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is in the lock
        timm = None
    if timm is not None and timm.is_model(name):
        return timm.create_model(name, pretrained=False)
    raise ValueError(
        f"unknown model {name!r}: expected a torchvision model name (e.g. resnet50), a timm model name "
        f"(e.g. resnet18d), or module:attr (e.g. mypackage.models:build)"
    )
