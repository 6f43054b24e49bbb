"""Kept steps handed over with the trained model (koaml.snapshots); the training callback is tested end to end in
tests/test_checkpoint_eval.py."""

import json
from types import SimpleNamespace

import pytest

from koaml.curves import curve_rows
from koaml.snapshots import NOT_REACHED, STEPS_DIR, hand_over, keeper, not_reached, pass_on_not_reached


def test_kept_steps_move_into_the_trained_folder(tmp_path):
    for step in (10, 20):
        (tmp_path / "kept" / str(step)).mkdir(parents=True)
        (tmp_path / "kept" / str(step) / "adapter_model.safetensors").write_bytes(b"x")
    hand_over(tmp_path / "kept", tmp_path / "trained", [10, 20], last_step=30)
    assert sorted(p.name for p in (tmp_path / "trained" / STEPS_DIR).iterdir()) == ["10", "20"]
    assert not any((tmp_path / "kept").iterdir())


def test_a_step_past_the_end_of_training_is_marked_not_reached_and_the_model_kept(tmp_path, caplog):
    (tmp_path / "kept" / "10").mkdir(parents=True)
    hand_over(tmp_path / "kept", tmp_path / "trained", [10, 40], last_step=25)  # epochs made 25 steps
    steps = tmp_path / "trained" / STEPS_DIR
    assert (steps / "10").is_dir() and not_reached(steps / "10") is None
    assert [p.name for p in (steps / "40").iterdir()] == [NOT_REACHED]
    assert not_reached(steps / "40") == {"step": 40, "last_step": 25}
    assert "training ended at step 25, before step 40: the trained model is kept" in caplog.text


def test_a_step_passed_but_not_kept_is_an_error(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(SystemExit, match=r"checkpoint_eval: step 10 was passed but not kept"):
        hand_over(tmp_path / "kept", tmp_path / "trained", [10], last_step=25)


def test_a_merge_or_evaluation_of_a_step_not_reached_is_passed_on(tmp_path):
    from koaml.merge import merge

    step = tmp_path / "trained" / STEPS_DIR / "40"
    step.mkdir(parents=True)
    (step / NOT_REACHED).write_text(json.dumps({"step": 40, "last_step": 25}))
    merge("no-config.yaml", "no-base", str(step), str(tmp_path / "merged"))  # nothing loaded
    assert not_reached(tmp_path / "merged") == {"step": 40, "last_step": 25}
    assert not pass_on_not_reached(tmp_path / "trained", tmp_path / "other")  # a model folder is no marker
    assert not (tmp_path / "other").exists()


def test_a_run_resumed_after_its_steps_changed_refuses_a_step_it_passed(tmp_path):
    callback = keeper([10, 40], tmp_path / "kept")
    state = SimpleNamespace(global_step=20)
    args = SimpleNamespace(output_dir=str(tmp_path / "checkpoints"))
    with pytest.raises(SystemExit, match=r"step 10 was passed before this run resumed at step 20"):
        callback.on_train_begin(args, state, None)
    (tmp_path / "kept" / "10").mkdir(parents=True)  # kept before it was stopped: goes on
    callback.on_train_begin(args, state, None)


def test_the_curve_shows_a_step_not_reached(tmp_path):
    folder = tmp_path / "checkpoint_eval/run/40/bench"
    folder.mkdir(parents=True)
    (folder / NOT_REACHED).write_text(json.dumps({"step": 40, "last_step": 25}))
    point = {"run": "run", "step": 40, "point": "checkpoint", "benchmark": "bench", "folder": str(folder)}
    table = curve_rows([{**point, "summary": None, "selection": None}])
    assert table[["step", "status", "selected"]].to_dict("records") == [
        {"step": 40, "status": "not reached", "selected": False}
    ]
