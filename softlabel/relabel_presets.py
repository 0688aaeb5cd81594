"""PRISM's per-architecture relabel presets (Brian-Moser/prism: relabel/generate_soft_label_r18.py,
_r50.py, _r101.py and their relabel_r*.sh): the teacher family, the ensemble rule and the batch size.
The other defaults every preset shares are PRISM's relabel command (``PRISM_RELABEL`` in
``softlabel.commands.relabel``).

An entry here is a whole preset: ``relabel/generate_soft_label.py --preset NAME`` runs it and the
tests of the presets run over this table; its row in docs/relabel.md's presets table is the rest."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """A per-architecture entry point: its teacher family, ensemble rule and batch size."""
    name: str
    teachers: list[str]
    ensemble: str
    batch_size: int


PRESETS = {p.name: p for p in (
    Preset("r18", ["resnet18", "mobilenet_v2", "alexnet", "shufflenet_v2_x0_5"], "normmean", 50),
    Preset("r50", ["resnet50", "mobilenet_v2", "alexnet", "shufflenet_v2_x0_5"], "primary-weighted", 50),
    Preset("r101", ["resnet101", "mobilenet_v2", "alexnet", "shufflenet_v2_x0_5"], "primary-weighted", 100),
)}
