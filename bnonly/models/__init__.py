"""Model families: pure nn.Module code and freezing by module type (no training, no I/O but
pretrained.py's reading of a weights file).

registry.build_model turns a name into a model: resnetD and resnet1dD (resnet.py), imagenet:resnetD
(imagenet_resnet.py), torchvision:NAME (zoo.py); freezing.py freezes any of them.
"""


class ModelError(ValueError):
    """A model that cannot be built, frozen or loaded as asked; its message is one line that names the
    model, the key or the layer at fault (the trainer turns it into a ConfigError)."""
