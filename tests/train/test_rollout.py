"""BatchSampler: which prompts form each RL batch (shuffled passes + AGR replay)."""

import json

import numpy as np

from agrl.config import GuidanceConfig
from agrl.rl.guidance import init_replay, update_replay
from agrl.train.rollout import BatchSampler


def test_batches_are_distinct_and_cover_the_pool_every_epoch():
    bs = BatchSampler(10, seed=3)
    seen = []
    for _ in range(5):  # 5 x 4 = 20 draws = two passes over 10 prompts
        idx, n_rep = bs.next(4, None, 0.0, 0.0)
        assert n_rep == 0 and len(set(idx.tolist())) == 4
        seen += idx.tolist()
    assert sorted(seen[:10]) == list(range(10))  # the first pass is a permutation
    assert (bs.epoch, bs.cursor) == (1, 10)  # the second pass was reshuffled and consumed


def test_state_dict_round_trip_continues_identically():
    a = BatchSampler(50, seed=0)
    for _ in range(3):
        a.next(8, None, 0.0, 0.0)
    state = json.loads(json.dumps(a.state_dict()))  # what the checkpoint stores
    b = BatchSampler(50, seed=123)
    b.load_state_dict(state)
    for _ in range(10):
        np.testing.assert_array_equal(a.next(8, None, 0.0, 0.0)[0], b.next(8, None, 0.0, 0.0)[0])


def test_unsolved_hard_prompts_are_replayed_first():
    cfg = GuidanceConfig(tau=0.25)
    table = init_replay(20)
    # prompts 3 and 7 failed (acc 0), prompt 5 was solved (acc 1)
    table = update_replay(table, np.array([3, 5, 7]), np.array([0.0, 1.0, 0.0]),
                          np.array([True, False, True]), step=0, cfg=cfg)  # fmt: skip
    bs = BatchSampler(20, seed=1)
    idx, n_rep = bs.next(6, table, p_replay=1.0, tau=cfg.tau)
    assert n_rep == 2 and sorted(idx[:2].tolist()) == [3, 7]
    assert len(set(idx.tolist())) == 6 and 5 not in idx[:2]
    idx, n_rep = bs.next(6, table, p_replay=0.0, tau=cfg.tau)
    assert n_rep == 0
