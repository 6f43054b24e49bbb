"""Kept steps handed over with the trained model (koaml.snapshots); the training callback is tested end to end in
tests/test_checkpoint_eval.py."""

import pytest

from koaml.snapshots import STEPS_DIR, hand_over


def test_kept_steps_move_into_the_trained_folder(tmp_path):
    for step in (10, 20):
        (tmp_path / "kept" / str(step)).mkdir(parents=True)
        (tmp_path / "kept" / str(step) / "adapter_model.safetensors").write_bytes(b"x")
    hand_over(tmp_path / "kept", tmp_path / "trained", [10, 20])
    assert sorted(p.name for p in (tmp_path / "trained" / STEPS_DIR).iterdir()) == ["10", "20"]
    assert not any((tmp_path / "kept").iterdir())


def test_a_step_past_the_end_of_training_is_named(tmp_path):
    (tmp_path / "kept" / "10").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"checkpoint_eval: training ended before step 40; evaluate steps up to"):
        hand_over(tmp_path / "kept", tmp_path / "trained", [10, 40])
