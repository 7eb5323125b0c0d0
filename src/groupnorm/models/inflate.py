"""Inflation (Carreira & Zisserman 2017): a 2D checkpoint as the initial weights of a 3D model.

``inflate_state_dict(state_2d, model_3d)`` repeats each k x k kernel along time and divides by
the temporal size ("mean": a static clip then gives the 2D activations, away from the
temporal borders) or puts it at the temporal centre ("center": exactly the 2D network applied
frame by frame). Norm parameters and statistics carry over; a head of another shape is left
to train from scratch, as when fine-tuning an ImageNet model on Kinetics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["InflateMethod", "Inflation", "inflate_state_dict", "inflate_weight", "load_inflated"]

InflateMethod = Literal["mean", "center"]


def inflate_weight(weight: Tensor, shape: Sequence[int], method: InflateMethod = "mean") -> Tensor:
    """A 2D conv kernel (Cout, Cin, kh, kw) as a 3D one of ``shape`` (Cout, Cin', kt, kh, kw).

    ``mean``: repeated kt times along time, divided by kt; ``center``: at the temporal centre,
    zeros elsewhere. A one-channel input kernel (grey images) spreads over Cin' channels
    (repeated, divided by Cin'), so that a grey clip gives the 2D response.
    """
    if method not in ("mean", "center"):
        raise ValueError(f"inflate: method must be 'mean' or 'center'; got {method!r}")
    cout, cin, kt, kh, kw = shape
    if weight.dim() != 4 or weight.shape[0] != cout or weight.shape[2:] != (kh, kw):
        raise ValueError(f"inflate: cannot inflate a kernel of shape {tuple(weight.shape)} into {tuple(shape)}")
    if weight.shape[1] != cin:
        if weight.shape[1] != 1:
            raise ValueError(
                f"inflate: the 2D kernel has {weight.shape[1]} input channels, the 3D one {cin}; only a "
                "one-channel (grey) kernel spreads over several channels"
            )
        weight = weight.expand(cout, cin, kh, kw) / cin
    if method == "mean":
        return weight.unsqueeze(2).expand(cout, cin, kt, kh, kw) / kt
    out = weight.new_zeros(cout, cin, kt, kh, kw)
    out[:, :, kt // 2] = weight
    return out


@dataclass
class Inflation:
    """What :func:`inflate_state_dict` did, tensor by tensor (names of the 3D model's state_dict)."""

    inflated: list[str] = field(default_factory=list)  # 2D kernels made 3D
    copied: list[str] = field(default_factory=list)  # same shape: norms, 1x1 kernels after reshape, the head
    skipped: list[str] = field(default_factory=list)  # a shape that does not carry (e.g. a head of other classes)
    missing: list[str] = field(default_factory=list)  # in the 3D model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the 3D model

    def summary(self) -> str:
        return (
            f"{len(self.inflated)} kernels inflated, {len(self.copied)} tensors copied, "
            f"{len(self.skipped)} skipped ({', '.join(self.skipped) or 'none'}), "
            f"{len(self.missing)} missing ({', '.join(self.missing) or 'none'})"
        )


def _state_of(source: Mapping[str, Tensor] | nn.Module | str | Path) -> Mapping[str, Tensor]:
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"inflate: no checkpoint at {path}")
        source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise TypeError(
            f"inflate: source must be a state_dict, a checkpoint path or an nn.Module; got {type(source).__name__}"
        )
    if "model" in source and isinstance(source["model"], Mapping):  # an engine checkpoint
        source = source["model"]
    return source


@torch.no_grad()
def inflate_state_dict(
    source: Mapping[str, Tensor] | nn.Module | str | Path,
    model: nn.Module,
    *,
    method: InflateMethod = "mean",
    strict: bool = False,
) -> Inflation:
    """Load a 2D model's weights into the 3D ``model`` in place, inflating conv kernels; return what was done.

    ``source``: a 2D state_dict, an nn.Module, or a checkpoint path (an engine checkpoint.pt, whose
    ``model`` entry is used; loaded with weights_only=True). Tensors are matched by name. A tensor
    whose shape cannot carry over (e.g. the head, for another number of classes) is skipped and
    keeps its initialisation. ``strict``: raise ValueError if any 3D tensor is missing from the
    source or skipped, or any source tensor is unused.
    """
    state = _state_of(source)
    target = model.state_dict()
    report = Inflation()
    for name, dst in target.items():
        src = state.get(name)
        if src is None:
            report.missing.append(name)
            continue
        if src.shape == dst.shape:
            dst.copy_(src)
            report.copied.append(name)
        elif src.dim() == 4 and dst.dim() == 5:
            try:
                dst.copy_(inflate_weight(src.to(dst.dtype), dst.shape, method))
            except ValueError:
                report.skipped.append(name)
                continue
            report.inflated.append(name)
        else:
            report.skipped.append(name)
    report.unexpected = [k for k in state if k not in target]
    if strict and (report.missing or report.skipped or report.unexpected):
        raise ValueError(
            f"inflate (strict): {report.summary()}; unexpected in the source: {', '.join(report.unexpected) or 'none'}"
        )
    return report


def load_inflated(
    model: nn.Module, source: Mapping[str, Tensor] | nn.Module | str | Path, *, method: InflateMethod = "mean"
) -> Inflation:
    """Inflate ``source`` into ``model`` and keep its pretrained last gammas: the blocks of a model
    initialised from a checkpoint are not re-zeroed by ``zero_init_last_gamma`` (build_model)."""
    report = inflate_state_dict(source, model, method=method)
    if not report.inflated and not report.copied:
        raise ValueError(f"inflate: no tensor of the source matches the model by name ({report.summary()})")
    for m in model.modules():
        if getattr(m, "last_norm_name", None) is not None:
            m.last_norm_name = None
    return report
