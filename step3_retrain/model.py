"""Stage 3's model: the same network as stage 1, trained from scratch on modality-aware targets."""
from avvp.model import MMIL_Net, mmil_loss  # noqa: F401  (re-exported for this stage)
