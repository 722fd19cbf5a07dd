"""Stage 1's data: the three LLP splits on the device and the weak-label training targets."""
from avvp import engine


def load_data(args, device, train=True):
    """train split (weak labels only) and val/test splits with dense truth."""
    train_split = engine.load_split(args, args.label_train, device, name="train") if train else None
    return (train_split, *engine.load_eval_splits(args, device))


def targets(split, args):
    """(video, audio, visual) targets (N, 25): y, y and the smoothed visual target 0.9 y + 0.05."""
    return engine.weak_targets(split.labels, args.visual_smoothing)
