"""Sample-then-filter: a sample replaces the greedy caption only where it is grounded."""

from __future__ import annotations

from lightning_modules.components.grounded_choice import farthest_grounded

ALLOWED = {"shape:circle", "color:red", "motion:left", "scene:kitchen", "shape:star"}
GREEDY = "a red circle moves left in the kitchen."


def test_the_farthest_grounded_sample_replaces_the_greedy_caption():
    samples = ["a blue ball heads left in a kitchen.",  # blue: a tag nothing recognised
               "in a kitchen, a scarlet orb drifts leftward.",  # synonyms of allowed tags: grounded
               "a red star goes left in the kitchen."]
    assert farthest_grounded(GREEDY, samples, ALLOWED) == samples[1]


def test_of_the_grounded_samples_the_one_sharing_fewest_bigrams_with_the_greedy_caption_wins():
    near = "a red circle goes left in the kitchen."  # grounded, 5 of its 7 bigrams are the greedy's
    far = "in a kitchen, a scarlet orb drifts leftward."  # grounded, none shared
    assert farthest_grounded(GREEDY, [near, far], ALLOWED) == far
    assert farthest_grounded(GREEDY, [far, near], ALLOWED) == far
    twin = "in a kitchen, an orb in scarlet drifts leftward."  # as far as ``far``: a tie keeps the earlier
    assert farthest_grounded(GREEDY, [near, twin, far], ALLOWED) == twin


def test_a_sample_that_says_less_than_the_greedy_caption_is_not_taken():
    assert farthest_grounded(GREEDY, ["a red circle moves left."], ALLOWED) == GREEDY  # the scene is gone
    assert farthest_grounded(GREEDY, ["", "  "], ALLOWED) == GREEDY
    # what the greedy caption names outside the allowed tags is not asked of a sample
    assert farthest_grounded("a green circle moves left in the kitchen.", ["a red circle goes left in a kitchen."],
                          ALLOWED) == "a red circle goes left in a kitchen."


def test_without_a_grounded_sample_the_greedy_caption_stays():
    assert farthest_grounded(GREEDY, ["a red circle moves up in the kitchen."], ALLOWED) == GREEDY
    assert farthest_grounded(GREEDY, [], ALLOWED) == GREEDY
