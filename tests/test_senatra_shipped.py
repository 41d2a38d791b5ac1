"""The SeNaTra segstream ships segments held-out synthetic video at the level its model card states
(models/weights/SENATRA_MODEL_CARD.md), through the pipeline's own model building."""

from segstream.pipeline.config import ModelConfig
from segstream.pipeline.evaluation import evaluate_segmenter
from segstream.pipeline.model_factory import build_segmenter
from segstream.pipeline.segment_metrics import evaluate_semantic
from segstream.pipeline.training import FIRST_TRAINING_SEED

HELD_OUT_SEEDS = (0, 1)  # training scenes start at FIRST_TRAINING_SEED

# The card's figures for these 40 frames, less a margin for float differences across machines.
CARD_MIOU, CARD_PQ, CARD_PQ_STUFF = 0.320, 0.263, 0.527
MARGIN = 0.02


def test_shipped_senatra_keeps_its_cards_miou_and_pq_on_held_out_scenes():
    assert max(HELD_OUT_SEEDS) < FIRST_TRAINING_SEED
    panoptic = build_segmenter(ModelConfig(family="senatra", device="cpu", precision="fp32"))
    semantic = build_segmenter(ModelConfig(family="senatra", device="cpu", precision="fp32", task="semantic"))
    pq = evaluate_segmenter(panoptic.segment, HELD_OUT_SEEDS, 320, 240, 20, panoptic.labels, progress=False)
    miou = evaluate_semantic(semantic.segment, HELD_OUT_SEEDS, 320, 240, 20, semantic.labels.num_classes)
    assert pq["frames"] == 40
    assert miou["miou"] >= CARD_MIOU - MARGIN, miou
    assert pq["pq"] >= CARD_PQ - MARGIN, pq
    assert pq["pq_stuff"] >= CARD_PQ_STUFF - MARGIN, pq  # its backgrounds (it finds no thing class yet)
