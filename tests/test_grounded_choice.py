"""Sample-then-filter: a sample replaces the greedy caption only where it is grounded."""

from __future__ import annotations

from lightning_modules.components.grounded_choice import first_grounded

ALLOWED = {"shape:circle", "color:red", "motion:left", "scene:kitchen", "shape:star"}
GREEDY = "a red circle moves left in the kitchen."


def test_the_first_grounded_sample_replaces_the_greedy_caption():
    samples = ["a blue ball heads left in a kitchen.",  # blue: a tag nothing recognised
               "in a kitchen, a scarlet orb drifts leftward.",  # synonyms of allowed tags: grounded
               "a red star goes left in the kitchen."]
    assert first_grounded(GREEDY, samples, ALLOWED) == samples[1]


def test_a_sample_that_says_less_than_the_greedy_caption_is_not_taken():
    assert first_grounded(GREEDY, ["a red circle moves left."], ALLOWED) == GREEDY  # the scene is gone
    assert first_grounded(GREEDY, ["", "  "], ALLOWED) == GREEDY
    # what the greedy caption names outside the allowed tags is not asked of a sample
    assert first_grounded("a green circle moves left in the kitchen.", ["a red circle goes left in a kitchen."],
                          ALLOWED) == "a red circle goes left in a kitchen."


def test_without_a_grounded_sample_the_greedy_caption_stays():
    assert first_grounded(GREEDY, ["a red circle moves up in the kitchen."], ALLOWED) == GREEDY
    assert first_grounded(GREEDY, [], ALLOWED) == GREEDY
