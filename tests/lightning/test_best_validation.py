"""Best-validation model selection (data.val_fraction > 0) in real runs on digits: validation
accuracy after every epoch, the best epoch's weights kept, tested at the end beside the final
weights, and all of it unchanged by a crash and resume."""

from __future__ import annotations

import functools

import pytest
import torch

from sparseforge.continual.evaluation import evaluate_tasks
from sparseforge.continual.validation import validation_view
from sparseforge.errors import ConfigError
from sparseforge.train import build, train
from tests.helpers.cl import QUIET, Crash, one_thread, summary
from tests.helpers.config import compose_config

# 5 epochs of plain training on digits, a fifth of every class held out
IID = [*QUIET, "scenario=iid", "scenario.epochs_per_task=5", "data.val_fraction=0.2", "seed=1"]
SAVE = ["+callbacks.weights._target_=tests.helpers.cl.save_weights_every_epoch"]


def accuracy(run, weights: dict, split: str) -> float:
    """The accuracy of ``weights`` on the one task's test (or validation) examples, evaluated
    from scratch: a fresh model, the datamodule's inputs, plain ``evaluate_tasks``."""
    dm, method = run.datamodule, run.method
    method.load_state_dict(weights)
    method.eval()
    task = dm.tasks[0] if split == "test" else validation_view(dm.tasks[0])
    data = dm.test_data if split == "test" else dm.train_data
    inputs = functools.partial(dm.eval_batches, split="test" if split == "test" else "train")
    return evaluate_tasks(method.predict_scores, inputs, data.y, [task], torch.device("cpu"))["class_il"][0]


def test_the_best_epochs_weights_are_tested_beside_the_final_ones(tmp_path):
    run_dir = tmp_path / "run"
    with one_thread():
        train(compose_config([*IID, *SAVE], output_dir=run_dir))
        fresh = build(compose_config(IID, output_dir=tmp_path / "eval"))
    s = summary(run_dir)
    m, val = s["metrics"], s["validation"]
    per_epoch = val["acc_per_epoch"]
    assert len(per_epoch) == 5 and val["model_selection"] is True
    assert val["n_val"] == len(fresh.datamodule.tasks[0].val_index) > 0
    best = max(range(5), key=lambda e: (per_epoch[e], -e))  # the first epoch with the best accuracy
    assert m["best_val/epoch"] == best and m["best_val/acc"] == per_epoch[best] and m["val/acc"] == per_epoch[-1]
    assert best < 4, "the test needs a best epoch before the last one to tell best from final"
    weights = {e: torch.load(run_dir / f"weights_epoch{e}.pt", weights_only=True) for e in range(5)}
    # every epoch's validation accuracy, and both test accuracies, re-evaluated from saved weights
    assert [accuracy(fresh, weights[e], "val") for e in range(5)] == per_epoch
    assert accuracy(fresh, weights[best], "test") == m["test/acc_at_best_val"]
    assert accuracy(fresh, weights[4], "test") == m["test/acc"]


def test_training_never_sees_a_validation_example(tmp_path):
    with one_thread():
        run = build(compose_config(IID, output_dir=tmp_path / "run"))
    dm = run.datamodule
    task = dm.tasks[0]
    served = torch.cat([batch[3] for batch in dm.train_loader_for(task.train_index, epoch=0)])
    assert len(served) == len(task.train_index) == len(dm.train_data) - len(task.val_index)
    assert not torch.isin(served, task.val_index).any()


def test_a_crashed_and_resumed_run_keeps_its_best_epoch(tmp_path):
    crash = ["+callbacks.crash._target_=tests.helpers.cl.crash_at_epoch", "+callbacks.crash.epoch=4"]
    with one_thread():
        train(compose_config(IID, output_dir=tmp_path / "full"))
        with pytest.raises(Crash):
            train(compose_config([*IID, *crash], output_dir=tmp_path / "part"))
        state = torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=True)["callbacks"]
        kept = next(v for k, v in state.items() if k.startswith("BestValidation"))
        assert kept["best_epoch"] is not None and kept["best_weights"]
        train(compose_config([*IID, "ckpt_path=auto"], output_dir=tmp_path / "part"))
    full, part = summary(tmp_path / "full"), summary(tmp_path / "part")
    assert part["resumed_from"].endswith("last.ckpt")
    assert full["metrics"]["best_val/epoch"] < 4  # the best came before the crash: it had to survive it
    for key in ("test/acc", "val/acc", "best_val/acc", "best_val/epoch", "test/acc_at_best_val"):
        assert part["metrics"][key] == full["metrics"][key], key
    assert part["validation"] == full["validation"]


def test_several_tasks_report_validation_accuracy_without_selecting_a_model(tmp_path):
    overrides = [*QUIET, "scenario.n_tasks=2", "scenario.epochs_per_task=2", "data.val_fraction=0.1"]
    with one_thread():
        train(compose_config(overrides, output_dir=tmp_path / "run"))
    s = summary(tmp_path / "run")
    assert s["validation"]["model_selection"] is False and len(s["validation"]["acc_per_epoch"]) == 4
    assert 0.0 < s["metrics"]["val/acc"] <= 1.0
    assert not any(k.startswith("best_val/") or k == "test/acc_at_best_val" for k in s["metrics"])


def test_without_a_fraction_nothing_is_held_out_or_reported(tmp_path):
    with one_thread():
        train(compose_config([*QUIET, "scenario=iid", "scenario.epochs_per_task=1"], output_dir=tmp_path / "run"))
    s = summary(tmp_path / "run")
    assert "validation" not in s and "val/acc" not in s["metrics"]


@pytest.mark.parametrize("value", ["1.0", "-0.2"])
def test_a_bad_fraction_fails_at_start_in_one_line(tmp_path, value):
    with pytest.raises(ConfigError, match=r"data.val_fraction: must be in \[0, 1\)") as err:
        train(compose_config([*IID, f"data.val_fraction={value}"], output_dir=tmp_path / "run"))
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
