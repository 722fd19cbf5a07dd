"""Stage 3's model: the same network as stage 1 (avvp/model.py), trained from scratch on the
modality-aware targets of stage 2."""
from avvp.model import MMIL_Net, loss_options  # noqa: F401  (main_avvp.py builds and trains these)
