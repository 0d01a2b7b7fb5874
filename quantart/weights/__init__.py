"""Packaged weights: the LPIPS linear heads (lpips_vgg_lin.pth) used by the Stage 1 loss."""
