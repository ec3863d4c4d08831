"""Tag recognition: captions parse into tags, and the head learns to name them from encoder tokens."""

import torch

import pytest

from lightning_modules.components.tag_recognition import WORLD_TAGS, TagRecognition, tag_text, world_tags


def test_synonyms_fold_into_one_tag_per_value():
    caption = "There are two shapes on the countertop; a big azure dot drifts rightward and a tiny lemon ring heads left."
    assert world_tags(caption) == {"color:blue", "color:yellow", "motion:left", "motion:right", "scene:kitchen",
                                   "shape:circle", "shape:ring", "size:big", "size:small"}
    assert world_tags("hello everyone, thanks for watching") == set()
    assert world_tags("a red orb") == world_tags("a scarlet circle") == {"color:red", "shape:circle"}
    assert len(WORLD_TAGS) == len(set(WORLD_TAGS)) == 6 + 8 + 7 + 8 + 2


def test_targets_are_the_caption_tags_and_ignore_others():
    head = TagRecognition(4, tags=["shape:circle", "color:red"])
    target, mask = head.targets(["a red orb", "a blue square", ""])
    assert target.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert mask.eq(1.0).all()


def test_speech_attributes_come_from_the_transcript_and_are_left_out_where_it_is_silent():
    tags = ["shape:circle", "motion:left", "motion:right"]
    head = TagRecognition(4, tags=tags, speech_attributes=["motion"])
    captions = ["a circle moves left", "a circle moves left", "a circle moves left"]
    transcripts = ["this goes right", "hello and welcome", "the orb heads left"]
    target, mask = head.targets(captions, transcripts)
    assert target.tolist() == [[1, 0, 1], [1, 0, 0], [1, 1, 0]]  # the caption's motion is never used
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 1]]
    # a left-out tag carries no loss, whatever the head says of it
    tokens = torch.randn(1, 5, 4)
    loss = head(tokens, captions[1:2], transcripts[1:2])
    with torch.no_grad():
        head.head.bias[1:] += 50.0
    assert head(tokens, captions[1:2], transcripts[1:2]) == loss
    with pytest.raises(ValueError, match="transcript"):
        head.targets(captions)
    with pytest.raises(ValueError, match="speech_attributes.*'colour'"):
        TagRecognition(4, tags=tags, speech_attributes=["colour"])


def test_predict_names_tags_above_threshold_and_the_top_value_of_each_named_attribute():
    tags = ["shape:circle", "shape:star", "motion:left", "motion:up", "size:big"]
    head = TagRecognition(2, tags=tags, always_named=["shape", "motion"])
    with torch.no_grad():
        head.head.weight.zero_()
        head.head.bias.copy_(torch.tensor([-3.0, -1.0, 2.0, 1.0, -2.0]))
    named = head.predict(torch.zeros(1, 3, 2))
    assert named == [{"shape:star", "motion:left", "motion:up"}]  # star: top shape though below 0.5; size: not named
    assert tag_text(named[0], tags) == "star left up"
    assert tag_text(world_tags("In the snow a big scarlet orb heads left and a blue dot rises")) == "big red blue circle left up snow"


def test_the_head_learns_which_tags_a_clip_shows_from_wherever_the_object_is():
    """Tag features sit on a random token of each clip (an object can be anywhere): max-pooling
    finds them, and the loss falls to near zero."""
    torch.manual_seed(0)
    captions = ["a red orb", "a blue square", "a red square", "a blue orb"] * 8
    tags = ["shape:circle", "shape:square", "color:red", "color:blue"]
    head = TagRecognition(8, tags=tags)
    tokens = torch.randn(len(captions), 6, 8) * 0.1
    for row, caption in enumerate(captions):
        slot = 1 + row % 5  # never the CLS token
        for tag in world_tags(caption):
            tokens[row, slot, tags.index(tag)] += 3.0
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    first = head(tokens, captions).item()
    for _ in range(200):
        optimizer.zero_grad()
        loss = head(tokens, captions)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * first
    named = head.logits(tokens) > 0
    assert named.float().eq(head.targets(captions)[0]).all()


def test_gradient_reaches_the_encoder_tokens():
    tokens = torch.randn(2, 5, 8, requires_grad=True)
    TagRecognition(8)(tokens, ["a red orb", "a green star moves left"]).backward()
    assert tokens.grad[:, 1:].abs().sum() > 0 and tokens.grad[:, 0].abs().sum() == 0  # CLS left out
