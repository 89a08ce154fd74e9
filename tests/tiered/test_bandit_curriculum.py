"""BanditCurriculum: Exp3.S over difficulty levels (Graves et al. 2017)."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from tiered import TieredModule
from tiered.controllers import LSTMController
from tiered.curriculum import (
    BanditCurriculum,
    exp3s_probabilities,
    exp3s_update,
    scaled_reward,
)
from tiered.tasks import Copy
from tiered.tiers import Register


def test_exp3s_probabilities_mix_softmax_and_exploration():
    p = exp3s_probabilities(np.array([0.0, np.log(3.0)]), epsilon=0.2)
    np.testing.assert_allclose(p, [0.8 * 0.25 + 0.1, 0.8 * 0.75 + 0.1])
    assert p.sum() == pytest.approx(1.0)


def test_exp3s_update_rewards_the_arm_played_and_shares_weight():
    w = np.zeros(3)
    no_share = exp3s_update(w, arm=1, reward=0.5, probability=0.25, eta=0.1, alpha=0.0)
    np.testing.assert_allclose(no_share, [0.0, 0.2, 0.0], atol=1e-15)  # eta r / probability
    shared = exp3s_update(w, arm=1, reward=0.5, probability=0.25, eta=0.1, alpha=0.1)
    e = np.exp([0.0, 0.2, 0.0])
    expected = np.log(0.9 * e + 0.1 * (e.sum() - e) / 2)
    np.testing.assert_allclose(shared, expected)
    assert shared[1] < no_share[1] and shared[0] > 0  # weight flows to the others
    big = exp3s_update(np.array([800.0, 0.0]), 0, 1.0, 0.5, 1.0, 0.01)  # no overflow
    assert np.isfinite(big).all()


def test_rewards_are_scaled_by_the_quantiles_of_the_history():
    history = [float(v) for v in range(11)]  # quantiles 0.2 -> 2, 0.8 -> 8
    assert scaled_reward(5.0, history) == 0.0
    assert scaled_reward(8.0, history) == 1.0 and scaled_reward(20.0, history) == 1.0
    assert scaled_reward(2.0, history) == -1.0
    assert scaled_reward(3.0, [3.0, 3.0]) == 0.0  # no spread yet


def _fit(callback, steps, tmp_path=None, resume=None, batches=100, epochs=None):
    torch.manual_seed(0)
    task = Copy(lengths=(1, 2), eval_lengths=(1, 2), batch_size=4, train_batches=batches,
                val_batches=1)  # fmt: skip
    controller = LSTMController(task.input_size, task.output_size, Register(6))
    module = TieredModule(controller)
    callbacks = [callback]
    if tmp_path is not None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(ModelCheckpoint(dirpath=tmp_path, save_last=True))
    limit = {"max_epochs": epochs} if epochs else {"max_steps": steps}
    trainer = L.Trainer(**limit, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=callbacks,
                        enable_checkpointing=tmp_path is not None)  # fmt: skip
    trainer.fit(module, task, ckpt_path=resume)
    return trainer, task


@pytest.mark.parametrize("reward", ["prediction_gain", "gradient_gain"])
def test_each_batch_is_drawn_at_the_chosen_level_and_the_task_keeps_its_own(reward):
    levels = [(1, 1), (3, 3), (6, 6)]
    bandit = BanditCurriculum("lengths", levels, reward=reward, eta=0.5)
    seen = []
    original = Copy.make_batch

    def spy(self, split, index):
        batch = original(self, split, index)
        if split == "train":
            seen.append((index, self.lengths, int(batch.mask.sum(1)[0])))
        return batch

    Copy.make_batch = spy
    try:
        trainer, task = _fit(bandit, 12)
    finally:
        Copy.make_batch = original
    assert task.lengths == (1, 2)  # validation's range is the task's own
    for _, level, scored in seen:
        assert level in levels and scored == level[0]  # copy scores L steps
    assert len({level for _, level, _ in seen}) >= 2  # the bandit explored
    assert [index for index, _, _ in seen][:12] == list(range(12))
    assert len(bandit.history) == 12 and not np.allclose(bandit.weights, 0.0)
    logged = trainer.callback_metrics
    assert {"curriculum/lengths_arm", "curriculum/reward", "curriculum/lengths_expected"} <= set(
        logged
    )


def test_a_resumed_run_continues_the_same_curriculum(tmp_path):
    # Lightning replays a resumed epoch from its start, so runs resume exactly at epoch
    # ends (docs/sweeps.md): epochs of 3 batches, stopped after 2 epochs (max_epochs).
    levels = [(1, 1), (2, 2), (4, 4)]

    def bandit():
        return BanditCurriculum("lengths", levels, reward="gradient_gain", eta=0.5)

    straight = bandit()
    _fit(straight, None, batches=3, epochs=4)
    first = bandit()
    _fit(first, None, tmp_path=tmp_path, batches=3, epochs=2)
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    key = next(k for k in state if k.startswith("BanditCurriculum"))
    np.testing.assert_allclose(state[key]["weights"], first.weights)
    assert len(state[key]["history"]) == 6
    resumed = bandit()
    _fit(resumed, None, resume=tmp_path / "last.ckpt", batches=3, epochs=4)
    assert len(resumed.history) == len(straight.history) == 12
    np.testing.assert_allclose(resumed.history, straight.history, rtol=1e-10)
    np.testing.assert_allclose(resumed.weights, straight.weights, rtol=1e-10)
    assert not np.allclose(straight.weights, 0.0)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="at least 2"):
        BanditCurriculum("lengths", [(1, 2)])
    with pytest.raises(ValueError, match="reward must be one of"):
        BanditCurriculum("lengths", [(1, 2), (3, 4)], reward="accuracy")
    with pytest.raises(ValueError, match="epsilon must be in"):
        BanditCurriculum("lengths", [(1, 2), (3, 4)], epsilon=2.0)
    with pytest.raises(ValueError, match="field='items'"):
        _fit(BanditCurriculum("items", [(1, 2), (3, 4)]), 1)


def test_the_task_gets_its_batches_back_after_a_fit_for_the_next_bandit():
    torch.manual_seed(0)
    task = Copy(lengths=(1, 2), eval_lengths=(1, 2), batch_size=2, train_batches=100)
    for levels in ([(1, 1), (2, 2)], [(5, 5), (7, 7)]):
        bandit = BanditCurriculum("lengths", levels, reward="gradient_gain")
        module = TieredModule(LSTMController(task.input_size, task.output_size, Register(4)))
        drawn = []
        trainer = L.Trainer(max_steps=4, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0,
                            enable_checkpointing=False, callbacks=[bandit])  # fmt: skip
        original = Copy.example

        def spy(self, rng, split, drawn=drawn, original=original):
            drawn.append(self.lengths)
            return original(self, rng, split)

        Copy.example = spy
        try:
            trainer.fit(module, task)
        finally:
            Copy.example = original
        assert set(drawn) <= set(levels) and drawn  # this bandit's levels only
        assert "make_batch" not in vars(task)  # unwrapped at teardown
    other = BanditCurriculum("lengths", [(1, 1), (2, 2)])
    other._task = None
    task.make_batch = lambda split, index: None  # a stranger's wrapper
    with pytest.raises(ValueError, match="already pass through another BanditCurriculum"):
        trainer = SimpleNamespace(datamodule=task, world_size=1, accumulate_grad_batches=1)
        other.on_fit_start(trainer, module)
