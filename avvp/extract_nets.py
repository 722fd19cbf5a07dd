"""The three feature networks of the LLP release, and where their weights come from.

ResNet-152 (ImageNet, torchvision's IMAGENET1K_V1 weights), R(2+1)D-18 (Kinetics-400, torchvision)
and VGGish (AudioSet; the common PyTorch conversion of the TensorFlow release). They are written
here with the parameter names of torchvision and of that conversion, so the published weight files
load as they are: the extractor needs neither torchvision (whose wheels are built against one torch
build and fail on import against another) nor any download at run time.
"""
import os
import sys

import torch
from torch import nn

from .errors import AVVPError, one_line

# network -> (accepted file names, the first is the one downloaded; where it comes from)
WEIGHTS = {
    "res152": (("resnet152-394f9c45.pth", "resnet152-b121ed2d.pth"),
               "https://download.pytorch.org/models/resnet152-394f9c45.pth"),
    "r2plus1d_18": (("r2plus1d_18-91a641e6.pth",),
                    "https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth"),
    "vggish": (("vggish-10086976.pth",),
               "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"),
    "vggish_pca": (("vggish_pca_params-970ea276.pth",),
                   "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish_pca_params-970ea276.pth"),
}


# ----------------------------------------------------------------------------- ResNet-152

class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet152(nn.Module):
    """(B, 3, 224, 224) ImageNet-normalised images -> (B, 2048) globally pooled features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 8, 36, 3))):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(inplanes, planes, 2 if b == 0 and i > 0 else 1))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 2048, 7, 7)
        return x.mean((2, 3))


# ----------------------------------------------------------------------------- R(2+1)D-18

def conv2plus1d(inplanes, planes, midplanes, stride=1):
    """A 3x3x3 convolution factored into a spatial 1x3x3 and a temporal 3x1x1 one."""
    return nn.Sequential(
        nn.Conv3d(inplanes, midplanes, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
        nn.BatchNorm3d(midplanes), nn.ReLU(inplace=True),
        nn.Conv3d(midplanes, planes, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False))


class BasicBlock3d(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        # the width that gives the factored pair the parameter count of a full 3x3x3 convolution
        mid = (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)
        self.conv1 = nn.Sequential(conv2plus1d(inplanes, planes, mid, stride), nn.BatchNorm3d(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv2plus1d(planes, planes, mid), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv3d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm3d(planes))

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class R2Plus1D18(nn.Module):
    """(B, 3, 8, 112, 112) Kinetics-normalised clips -> (B, 512) globally pooled features."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(45), nn.ReLU(inplace=True),
            nn.Conv3d(45, 64, (3, 1, 1), 1, (1, 0, 0), bias=False), nn.BatchNorm3d(64), nn.ReLU(inplace=True))
        inplanes = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock3d(inplanes, planes, stride),
                                                         BasicBlock3d(planes, planes)))
            inplanes = planes

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))  # (B, 512, 1, 7, 7)
        return x.mean((2, 3, 4))


# ----------------------------------------------------------------------------- VGGish

class VGGish(nn.Module):
    """(B, 1, 96, 64) log-mel patches -> (B, 128) embeddings (ReLU'd, as in the PyTorch conversion).

    With postprocess, the AudioSet release's PCA whitening, clipping to [-2, 2] and 8-bit
    quantisation follow (values 0-255, as floats).
    """

    def __init__(self, postprocess=False):
        super().__init__()
        layers, c = [], 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, 1, 1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                        nn.ReLU(True), nn.Linear(4096, 128), nn.ReLU(True))
        self.postprocess = postprocess
        self.register_buffer("pca_eigen_vectors", torch.eye(128))  # (128, 128), rows are components
        self.register_buffer("pca_means", torch.zeros(128, 1))

    def forward(self, x):
        x = self.features(x)  # (B, 512, 6, 4): time x frequency
        # the TensorFlow weights flatten in (time, frequency, channel) order
        x = self.embeddings(x.permute(0, 2, 3, 1).flatten(1))
        if not self.postprocess:
            return x
        x = (self.pca_eigen_vectors @ (x.T - self.pca_means)).T
        return torch.round((x.clamp(-2.0, 2.0) + 2.0) * (255.0 / 4.0))


# ----------------------------------------------------------------------------- weights

def weight_dirs(weights_dir=None):
    """Folders searched for weight files: --weights_dir, then torch's hub cache ($TORCH_HOME)."""
    hub = os.path.join(torch.hub.get_dir(), "checkpoints")
    return [weights_dir, hub] if weights_dir else [hub]


def find_weights(names, weights_dir=None, download=False):
    """dict network -> path of its weight file. Missing files are fetched with download (saying
    so), otherwise one AVVPError names each file, where it goes and where it comes from."""
    found, missing = {}, []
    for name in names:
        files, url = WEIGHTS[name]
        path = next((os.path.join(d, f) for d in weight_dirs(weights_dir) for f in files
                     if os.path.isfile(os.path.join(d, f))), None)
        if path is None:
            missing.append(name)
        found[name] = path
    if missing and download:
        target = weight_dirs(weights_dir)[0]
        os.makedirs(target, exist_ok=True)
        for name in missing:
            files, url = WEIGHTS[name]
            found[name] = os.path.join(target, files[0])
            print(f"downloading {url} -> {found[name]}", file=sys.stderr)
            try:
                torch.hub.download_url_to_file(url, found[name], progress=True)
            except Exception as e:  # urllib raises several types; the message says which
                raise AVVPError(f"cannot download {url} ({type(e).__name__}: {e}); place {files[0]} in "
                                f"{target} by hand") from None
    elif missing:
        where = weight_dirs(weights_dir)[0]
        listed = "; ".join(f"{WEIGHTS[n][0][0]} (from {WEIGHTS[n][1]})" for n in missing)
        raise AVVPError(f"missing weight file(s) in {where}: {listed}; download them there, point --weights_dir at "
                        f"a folder holding them, or pass --download")
    return found


def load_state(path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: torch raises several types
        raise AVVPError(f"{path}: cannot read weights ({type(e).__name__}: {one_line(e, 300)})") from None
    if not isinstance(state, dict):
        raise AVVPError(f"{path}: not a state dict of weights (holds a {type(state).__name__})")
    return state


def load_into(net, path, ignore=()):
    """Load a published state dict into `net` by parameter name; every name must match."""
    state = {k: v for k, v in load_state(path).items() if not k.startswith(ignore)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise AVVPError(f"{path}: does not fit the network ({one_line(e, 300)})") from None


def build(random_weights=False, postprocess=False, weights_dir=None, download=False):
    """dict 'res152' | 'r2plus1d_18' | 'vggish' -> network in eval mode, on the CPU."""
    nets = {"res152": ResNet152(), "r2plus1d_18": R2Plus1D18(), "vggish": VGGish(postprocess)}
    if random_weights:
        return {k: n.eval() for k, n in nets.items()}
    names = list(nets) + (["vggish_pca"] if postprocess else [])
    paths = find_weights(names, weights_dir, download)
    load_into(nets["res152"], paths["res152"], ignore=("fc.",))
    load_into(nets["r2plus1d_18"], paths["r2plus1d_18"], ignore=("fc.",))
    vggish = nets["vggish"]
    state = load_state(paths["vggish"])
    state.update(pca_eigen_vectors=vggish.pca_eigen_vectors, pca_means=vggish.pca_means)
    if postprocess:
        pca = load_state(paths["vggish_pca"])
        try:
            state.update(pca_eigen_vectors=torch.as_tensor(pca["pca_eigen_vectors"], dtype=torch.float32),
                         pca_means=torch.as_tensor(pca["pca_means"], dtype=torch.float32).reshape(128, 1))
        except (KeyError, RuntimeError, TypeError) as e:
            raise AVVPError(f"{paths['vggish_pca']}: not VGGish PCA parameters ({one_line(e, 300)})") from None
    try:
        vggish.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise AVVPError(f"{paths['vggish']}: does not fit the network ({one_line(e, 300)})") from None
    return {k: n.eval() for k, n in nets.items()}
