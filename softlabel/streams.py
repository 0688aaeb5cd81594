"""The named random streams: every random choice of the toolkit is drawn from one of them.

A stream is numpy's ``SeedSequence(seed, spawn_key=(stream id, *key))``: it depends on the seed,
the stream and its key (epoch, batch, image, ...) only, never on a global generator, so the same
seed gives the same files and weights whatever the number of workers, processes or ranks, and
whatever order the work is done in. Stream ids are part of the stores' format: changing one
changes every store and run made with it (tests/test_pinned_outputs.py holds them fixed).
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np

from softlabel.errors import UserError

DEFAULT_SEED = 42  # --fkd-seed, as upstream


class Stream(IntEnum):
    SAMPLE_ORDER = 0       # relabel: (seed, epoch) -> the epoch's sample order
    BATCH_AUGMENT = 1      # relabel: (seed, epoch, batch) -> crops, flips, mix of one stored batch
    HARD_LABEL_MIX = 2     # trainer, hard labels: (seed, epoch, step, rank) -> online mix
    TRAIN_EPOCH = 3        # trainer: (seed, epoch) -> the torch seed every epoch restarts from
    LABEL_KEEP = 4         # relabel --label-keep: (seed, epoch) -> which of the epoch's steps get labels
    RANDOM_SUBSET = 5      # score_distilled.py: (subset seed, real class) -> the random real images of a class
    DISTILL_INIT = 6       # trainer, a distiller's init stage: (seed, init epoch) -> its sample order and crops
    PER_IMAGE_CROPS = 20   # per-image generation: (seed, image) -> that image's crops and flips
    PER_IMAGE_ORDER = 21   # per-image training: (seed, epoch) -> image order
    PER_IMAGE_CYCLE = 22   # per-image training: (seed, image, cycle) -> order of its stored crops
    PER_IMAGE_MIX = 23     # per-image training, --mixup_cutmix: (seed, pass, step, rank) -> online mix


def check_seed(seed: int, flag: str) -> None:
    """A seed every stream accepts (numpy's SeedSequence takes none below 0), checked before
    anything is written."""
    if seed < 0:
        raise UserError(f"{flag} must be >= 0, got {seed}")


def rng(seed: int, stream: Stream, *key: int) -> np.random.Generator:
    """The generator of ``stream`` at ``key`` for ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(stream),) + tuple(int(k) for k in key)))
