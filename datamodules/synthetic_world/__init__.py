"""The synthetic world: a miniature, fully known stand-in for the ASR pool and the benchmarks.

``python -m datamodules.synthetic_world --out DIR --num-videos N --seed S`` (or
:func:`generate_world`) writes::

    DIR/world.json                 parameters and counts; written last (a finished world)
    DIR/ground_truth.jsonl         one line per clip of every split (evaluation only)
    DIR/pool/videos/<id>.mp4       segmented source videos (H.264, yuv420p)
    DIR/pool/asr.json              HowTo100M-style {video_id: {start, end, text}}: the noise
    DIR/pool/human_refined.jsonl   ~5% of pool clips with clean captions (AnnotationRecord)
    DIR/foundation/images/*.png    stills, and captions.jsonl {image, caption}: static words only
    DIR/msrvtt/...                 MSR-VTT in its original formats
    DIR/msvd_qa/...                MSVD-QA in its original formats

With ``--pool-format webdataset`` the pool is written as video2dataset writes it instead of
``videos/`` and ``asr.json``: ``DIR/pool/00000.tar`` … (one sample per clip: ``{key}.mp4``,
``{key}.txt``, ``{key}.json``) and ``DIR/pool/00000_stats.json`` …; the human examples point
into the shards (``00000.tar/<key>.mp4``).

Modules: ``lexicon`` (words, synonyms, mishearings, ``attributes_mentioned``), ``spec``
(sampling what a segment shows), ``render`` (numpy drawing, PyAV encoding), ``captions``
(clean paraphrases), ``asr_noise`` (the ASR noise model), ``downstream`` (MSR-VTT, MSVD-QA),
``writer`` (deterministic files, atomic publication), ``shards`` (the pool as tar shards),
``generate`` (the orchestration).
"""

from .lexicon import attributes_mentioned

__all__ = ["attributes_mentioned", "generate_world"]


def __getattr__(name: str):
    # Lazy, so that importing the lexicon (evaluation) does not pull in numpy, PyAV or PIL.
    if name == "generate_world":
        from .generate import generate_world
        return generate_world
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
