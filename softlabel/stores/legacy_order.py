"""The sample order of the upstream SRe2L / G-VBSM stores, which store no sample indices: read by
the batch reader (``stores/batch.py``) for the stores ``stores/upstream.py`` opens."""
from __future__ import annotations

import torch
from torch.utils.data import RandomSampler


class LegacyOrder:
    """The sample order of SRe2L/G-VBSM stores: ``RandomSampler(dataset, generator=g)`` with
    one ``torch.Generator`` seeded with --fkd_seed, iterated to the end once per epoch, as the
    upstream relabel and trainer both do. The sampler itself draws it (it advances the
    generator by more than the one permutation it yields). Epoch e needs the generator state
    after e earlier epochs; those states (a few KB each), not the permutations, are kept."""

    def __init__(self, seed: int, num_samples: int):
        self.generator = torch.Generator().manual_seed(int(seed))
        self.sampler = RandomSampler(range(num_samples), generator=self.generator)
        self.states = [self.generator.get_state()]

    def epoch(self, e: int) -> torch.Tensor:
        while len(self.states) <= e:
            self.generator.set_state(self.states[-1])
            list(self.sampler)
            self.states.append(self.generator.get_state())
        self.generator.set_state(self.states[e])
        return torch.tensor(list(self.sampler), dtype=torch.int64)
