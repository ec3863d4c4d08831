"""Starting the tiny VideoLLM from the single-frame image captioner (``components.warm_start``)."""

from __future__ import annotations

import pytest
import torch

import lightning as L
from lightning_modules.components.presets import build_video_llm
from lightning_modules.components.warm_start import warm_start_from_image_model
from lightning_modules.video_llm_module import VideoLLMModule
from tests.test_video_llm_module import tiny_data, trainer

IMAGE_TEXTS = ["a red ball in the kitchen", "a big blue star on the beach"]
VIDEO_TEXTS = ["a red ball moves left", "hello everyone the star grows", "a blue ring goes up"]


@pytest.mark.parametrize("frame_difference, conv_stem", [(False, False), (True, False), (False, True), (True, True)])
def test_a_still_video_looks_to_the_started_encoder_as_its_frame_did_to_the_image_model(frame_difference, conv_stem):
    torch.manual_seed(0)
    image = build_video_llm("tiny", tokenizer_texts=IMAGE_TEXTS, num_frames=1, conv_stem=conv_stem)
    video = build_video_llm("tiny", tokenizer_texts=VIDEO_TEXTS, num_frames=4, frame_difference=frame_difference,
                            conv_stem=conv_stem)
    copied = warm_start_from_image_model(video, image)
    assert copied["shared_tokens"] >= 5  # a, red, ball, blue, star + special tokens
    video.eval(), image.eval()
    frame = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        seen = image.encode_video(frame)  # [2, 1 + 16, D]
        still = video.encode_video(frame.expand(2, 4, 3, 32, 32))  # [2, 1 + 4·16, D]
    # attention over identical frames averages identical values: every time step is the frame
    torch.testing.assert_close(still[:, 0], seen[:, 0], atol=1e-5, rtol=1e-4)
    for t in range(4):
        torch.testing.assert_close(still[:, 1 + 16 * t : 1 + 16 * (t + 1)], seen[:, 1:], atol=1e-5, rtol=1e-4)
    if frame_difference:  # the difference channels start live, with the frame channels' spread
        first = video.video_encoder.timesformer.embeddings.patch_embeddings.projection
        weight = (first[0] if conv_stem else first).weight
        frames, differences = weight[:, :3], weight[:, 3:]
        assert 0.7 < differences.std() / frames.std() < 1.4
    red_here, red_there = video.tokenizer.convert_tokens_to_ids("red"), image.tokenizer.convert_tokens_to_ids("red")
    emb = video.language_model.get_input_embeddings().weight
    torch.testing.assert_close(emb[red_here], image.language_model.get_input_embeddings().weight[red_there])


def test_models_of_another_family_are_refused():
    image = build_video_llm("tiny", tokenizer_texts=IMAGE_TEXTS, num_frames=1)
    stem = build_video_llm("tiny", tokenizer_texts=VIDEO_TEXTS, num_frames=4, conv_stem=True)
    with pytest.raises(ValueError, match="not the same model family"):
        warm_start_from_image_model(stem, image)


def test_a_fit_starts_from_the_image_captioner_checkpoint(tiny_world, tmp_path):
    ilm = VideoLLMModule(preset="tiny", tokenizer=str(tmp_path / "ilm_tok"), tokenizer_sources=[str(tiny_world / "pool")],
                         num_frames=1, image_size=32)
    ilm.configure_model()
    path = tmp_path / "ilm.ckpt"
    torch.save({"state_dict": ilm.state_dict(), "hyper_parameters": dict(ilm.hparams)}, path)
    module = VideoLLMModule(preset="tiny", tokenizer=str(tmp_path / "tok"), tokenizer_sources=[str(tiny_world / "pool")],
                            num_frames=4, image_size=32, frame_difference=True, init_from_ilm=str(path))
    seen = {}

    class Capture(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            seen["connector"] = pl_module.net.connector.net[0].weight.detach().clone()

    trainer(tmp_path, "fit", max_steps=1, callbacks=[Capture()]).fit(module, datamodule=tiny_data(tiny_world))
    torch.testing.assert_close(seen["connector"], ilm.net.connector.net[0].weight)
    with pytest.raises(FileNotFoundError, match="model.init_from_ilm"):
        VideoLLMModule(preset="tiny", tokenizer_sources=[str(tiny_world / "pool")], init_from_ilm=str(tmp_path / "none"))
