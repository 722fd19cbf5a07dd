"""Stage 1's data: the weak train labels with their features, and the val and test splits with
their dense truth (avvp/data.py keeps each split's features on the training device)."""
from avvp import data


def load_splits(source, label_train, label_val, label_test, eval_audio, eval_visual, device):
    """(train, val, test) Splits; train carries weak labels only, val and test also the dense truth."""
    train = data.load_split(source, label_train, device, name="train")
    val, test = data.load_eval_splits(source, label_val, label_test, eval_audio, eval_visual, device)
    return train, val, test
