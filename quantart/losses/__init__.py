"""Training objectives of both QuantArt stages (official taming/QuantArt losses)."""
from .gan import adopt_weight, hinge_d_loss, vanilla_d_loss
from .stage1 import VQLPIPSWithDiscriminator, adaptive_weight
from .stage2 import VQLPIPS_Ref, calc_mean_std, content_loss, style_loss

__all__ = ["VQLPIPSWithDiscriminator", "VQLPIPS_Ref", "adaptive_weight", "adopt_weight", "calc_mean_std",
           "content_loss", "hinge_d_loss", "style_loss", "vanilla_d_loss"]
