"""Which teacher output each class folder is.

Upstream tools assume folder i is teacher class i. When that is false (a 10-class subset of
ImageNet, folders named otherwise) the labels come out near chance and nothing complains.
Here the mapping is explicit: identity by default, ImageNet WNID folders map to a 1000-class
teacher automatically (timm ships the synset list), anything else through ``--class-map``.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

import torch

from softlabel.errors import UserError
from softlabel.files import read_json

if TYPE_CHECKING:
    from softlabel.data import FolderIndex

WNID = re.compile(r"^n\d{8}$")


def imagenet_wnids() -> list[str]:
    from timm.data import ImageNetInfo
    return list(ImageNetInfo().label_names())


def resolve(classes: list[str], num_outputs: int, class_map_file: Optional[str]) -> tuple[list[int], str]:
    """Teacher index of every class folder, and how it was decided ('identity', 'imagenet-wnid'
    or 'class-map')."""
    if class_map_file:
        mapping = read_json(class_map_file, "--class-map")
        if not isinstance(mapping, dict):
            raise UserError(f"--class-map {class_map_file}: expected a JSON object folder name -> class index")
        missing = [c for c in classes if c not in mapping]
        if missing:
            raise UserError(f"--class-map {class_map_file}: no entry for class folder '{missing[0]}' "
                            f"({len(missing)} folders missing)")
        index = []
        for c in classes:
            v = mapping[c]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < num_outputs:
                raise UserError(f"--class-map {class_map_file}: '{c}' -> {v!r} is not a class index "
                                f"of a {num_outputs}-class teacher")
            index.append(v)
        return index, "class-map"
    if num_outputs == 1000 and classes and all(WNID.match(c) for c in classes):
        wnids = {w: i for i, w in enumerate(imagenet_wnids())}
        unknown = [c for c in classes if c not in wnids]
        if unknown:
            raise UserError(f"class folder '{unknown[0]}' looks like an ImageNet WNID but is not one of "
                            f"ImageNet-1k's; pass --class-map FILE")
        return [wnids[c] for c in classes], "imagenet-wnid"
    if len(classes) > num_outputs:
        raise UserError(f"{len(classes)} class folders but the teacher has {num_outputs} outputs; "
                        f"pass --class-map FILE")
    return list(range(len(classes))), "identity"


def folder_targets(index: FolderIndex, class_index: Optional[list[int]]) -> torch.Tensor:
    """Each sample's label as the teacher numbers classes (folder order unless mapped)."""
    folder = torch.tensor(index.targets, dtype=torch.int64)
    return folder if class_index is None else torch.tensor(class_index, dtype=torch.int64)[folder]
