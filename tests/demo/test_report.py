"""torch_bam.demo.report: sentences that follow from the report's own numbers."""

from torch_bam.demo.report import epoch_choice_sentence


def _models(*best_epochs):
    return {f"m{i}": {"best_epoch": list(b)} for i, b in enumerate(best_epochs)}


def test_every_run_at_its_last_epoch_says_the_choice_selected_nothing():
    s = epoch_choice_sentence(_models([4, 4, 4], [4, 4, 4]), epochs=4)
    assert "last epoch (4)" in s and "selected nothing" in s and "--epochs" in s


def test_runs_that_chose_an_earlier_epoch_are_counted():
    s = epoch_choice_sentence(_models([4, 2, 4], [3, 4, 4]), epochs=4)
    assert s.startswith("In 2 of 6 runs") and "selected nothing" not in s


def test_one_epoch_has_nothing_to_choose():
    assert "no epoch to choose" in epoch_choice_sentence(_models([1], [1]), epochs=1)
