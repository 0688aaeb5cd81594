"""Feature-based distillers, the label-optimization study's baselines (its README's table): one
module per method, each a ``Distiller`` registered by name; the trainer's ``--distiller NAME``
adds ``weight x`` its loss to the cross-entropy (and an optional logit loss), as RepDistiller's
``train_student.py`` does (``-r 1 -a 0 -b WEIGHT``).

AB, FSP, FT and KDSS train parts of their own (AB: connectors and the student; FSP: the student;
FT: a paraphraser; KDSS: the teacher's self-supervision head) in an init stage before distilling
(``Distiller.init_epochs``, the trainer's ``--distill-init-epochs``). KDSS follows SSKD (Xu et al.
2020), the self-supervised KD method defined for CIFAR; the study's citation is a person
re-identification method (kdss.py). CC, FSP, NST and KDSVD are RepDistiller's methods beyond
the study's table.
"""
from __future__ import annotations

from softlabel.distill import ab, at, cc, crd, fitnet, fsp, ft, kdss, kdsvd, nst, pkt, rkd, sp, vid
from softlabel.distill.base import Distiller, Features
from softlabel.distill.features import FeatureTap, stage_modules, stage_names

DISTILLERS: dict[str, type[Distiller]] = {cls.name: cls for cls in (
    fitnet.FitNet, at.Attention, sp.Similarity, vid.VID, rkd.RKD, pkt.PKT, ab.ActivationBoundaries,
    ft.FactorTransfer, crd.CRD, kdss.KDSS, cc.CorrelationCongruence, fsp.FlowOfSolution,
    nst.NeuronSelectivity, kdsvd.SingularVectors)}

__all__ = ["DISTILLERS", "Distiller", "Features", "FeatureTap", "stage_modules", "stage_names"]
