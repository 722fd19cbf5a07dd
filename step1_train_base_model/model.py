"""Stage 1's model: HAN + attentive MMIL pooling trained with MA's contrastive term.

The network and losses live once in the shared package (avvp/model.py); this stage uses them as
they are. `--contrastive_weight 0` turns stage 1 into the HAN baseline.
"""
from avvp.model import MMIL_Net, contrastive_loss, mmil_loss  # noqa: F401  (re-exported for this stage)
