"""Stage 1's model: HAN + attentive MMIL pooling (avvp/model.py), trained on the weak labels with
MA's contrastive term; `--contrastive_weight 0` makes it the HAN baseline."""
from avvp.model import MMIL_Net, loss_options  # noqa: F401  (main_avvp.py builds and trains these)
