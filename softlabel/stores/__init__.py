"""The one store interface: ``open_store`` for every reader, ``create_store`` for every writer.

One implementation per format:

- ``stores/batch.py``      our batch store (format v1, full and top-k), one file per step;
- ``stores/upstream.py``   SRe2L / G-VBSM / PRISM batch stores (read only, no manifest);
- ``stores/per_image.py``  our per-image store (FKD layout), many labelled crops per image;
- ``stores/fkd_upstream.py`` the per-image files FKD itself writes (read only, numpy arrays).

``open_store`` finds the format, reads it, and runs every check once: flags that contradict
what the store records, the images it was made from, the files the run needs. It returns a
``Store`` whose ``settings`` are resolved and read-only and whose ``dataset`` is the loader
dataset of a rank. Adding a format means one ``Store`` subclass in its own module, plus its line in
``detect`` and ``open_store`` below; no script changes.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from softlabel.data import FolderIndex
from softlabel.distributed import DistInfo, require_same
from softlabel.errors import UserError
from softlabel.stores import batch, fkd_upstream, per_image, upstream
from softlabel.stores.base import (BATCH, FKD_UPSTREAM, KINDS, PER_IMAGE, UPSTREAM, LabelledImages, Request, StepPlan,
                                   Store, StoreSettings, StoreWriter, check_images, check_recorded)

__all__ = ["BATCH", "FKD_UPSTREAM", "KINDS", "PER_IMAGE", "UPSTREAM", "LabelledImages", "Request", "StepPlan", "Store",
           "StoreSettings", "detect", "begun", "layout_of", "open_store", "create_store", "store_class"]

# The one class of each kind.
CLASSES: dict[str, type[Store]] = {BATCH: batch.BatchStore, UPSTREAM: upstream.UpstreamStore,
                                   PER_IMAGE: per_image.PerImageStore, FKD_UPSTREAM: fkd_upstream.FkdUpstreamStore}


def detect(path: str, flag: str) -> str:
    """The store's kind (one of ``KINDS``); a folder that is none of them is one error."""
    if not os.path.isdir(path):
        raise UserError(f"{flag} {path}: no such directory")
    if per_image.is_store(path):
        return PER_IMAGE
    if os.path.isfile(batch.manifest_path(path)):
        return BATCH
    if upstream.is_legacy(path):
        return UPSTREAM
    if fkd_upstream.looks_like(path):
        return FKD_UPSTREAM
    raise UserError(f"{flag} {path}: no {batch.MANIFEST} and no epoch_0/batch_0.tar; not a soft-label store")


def begun(path: str) -> bool:
    """Whether a batch store of ours has been begun at ``path`` (its manifest is written): a rerun of
    relabel there resumes or extends it."""
    return os.path.isfile(batch.manifest_path(path))


def store_class(path: str, flag: str) -> type[Store]:
    """The class that opens the store at ``path``: what its kind and layout are before it is opened."""
    return CLASSES[detect(path, flag)]


def layout_of(path: str, flag: str) -> str:
    """"batch" (one file per step: ours or an upstream batch store) or "per-image" (ours or FKD's own)."""
    return store_class(path, flag).layout


def open_store(path: str, index: Optional[FolderIndex] = None, *, flag: str = "--fkd-path",
               request: Request = Request(), layout: Optional[str] = None, skip_bad_images: bool = False,
               data_arg: str = "--train-dir", epochs: Optional[int] = None) -> Store:
    """Open the store at ``path`` after every check.

    ``index``: the images the store must have been made from (fingerprint, skipped images);
    ``data_arg`` names them in errors. ``layout``: the layout the caller expects ("batch" or
    "per-image"; None: any). ``epochs``: the files of that many epochs must all be there.
    ``request``: the flags given for what the store records, and how its labels are to be read
    (``interpolation``, ``need_pixels``)."""
    if layout == "per-image":  # ours, or FKD's own files; else our reader names what is missing
        fkd = os.path.isdir(path) and not per_image.is_store(path) and fkd_upstream.looks_like(path)
        kind = FKD_UPSTREAM if fkd else PER_IMAGE
    else:
        kind = detect(path, flag)
    if layout == "batch" and CLASSES[kind].layout == "per-image":
        raise UserError(f"{flag} {path} holds FKD per-image labels; pass --fkd-layout per-image --epochs N")
    store = CLASSES[kind].open(path, flag, index, request)
    store.check_request(request)
    check_recorded(request, store.manifest, store.where)
    if index is not None:
        check_images(store, index, skip_bad_images, f"{data_arg} {index.root}")
    if epochs is not None:
        store.check_complete(epochs, index)
    return store


def create_store(path: str, manifest: dict, info: Optional[DistInfo] = None, *, flag: str = "--fkd-path",
                 index: Optional[FolderIndex] = None) -> StoreWriter:
    """The writer of a new store, or of an existing one made with the same content settings
    (finished or extended). The format is the manifest's. Under torchrun every rank must bring
    rank 0's manifest (a node with other images under the same names would not), or every rank
    stops with one line before anything is written."""
    if info is not None:
        require_same(info, json.dumps(manifest, sort_keys=True).encode(),
                     f"would write another manifest into {flag} {path} (other images, or other teachers or "
                     f"settings)")
    if manifest.get("format") == per_image.FORMAT:
        return per_image.create(path, manifest, index, info, flag)
    return batch.create(path, manifest, info, flag)
