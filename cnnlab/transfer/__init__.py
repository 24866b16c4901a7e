"""Transfer learning: pretrained backbones cut into stages, the lecture's fine-tuning regimes, and a
feature cache for the regimes that only train a head."""
from cnnlab.transfer.backbones import BACKBONES, Backbone
from cnnlab.transfer.regimes import REGIMES, Plan, TransferNet, choose_regime

__all__ = ["BACKBONES", "Backbone", "REGIMES", "Plan", "TransferNet", "choose_regime"]
