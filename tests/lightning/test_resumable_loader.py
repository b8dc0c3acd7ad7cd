"""The stateful training loader: a pass resumed from its state serves exactly the rest."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.lightning.datamodule import EpochPermutation, ResumableLoader


def loader(n: int, batch_size: int, seed: int, drop_last: bool) -> ResumableLoader:
    return ResumableLoader(
        torch.arange(n), batch_size=batch_size, sampler=EpochPermutation(n, seed), drop_last=drop_last
    )


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 200),
    batch_size=st.integers(1, 64),
    seed=st.integers(0, 2**31 - 1),
    drop_last=st.booleans(),
    data=st.data(),
)
def test_a_resumed_pass_serves_exactly_the_batches_after_the_saved_point(n, batch_size, seed, drop_last, data):
    full = [b.tolist() for b in loader(n, batch_size, seed, drop_last)]
    cut = data.draw(st.integers(0, len(full)), label="batches served before the checkpoint")

    interrupted = loader(n, batch_size, seed, drop_last)
    it = iter(interrupted)
    for _ in range(cut):
        next(it)
    state = interrupted.state_dict()
    assert state == {"batches_served": cut}

    resumed = loader(n, batch_size, seed, drop_last)  # a new process: a new loader object
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == full[cut:]
    assert resumed.state_dict() == {"batches_served": len(full)}
    # the skip is for one pass only: the next pass (epoch) is whole again
    assert [b.tolist() for b in resumed] == full
