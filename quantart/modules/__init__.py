"""Neural network components with the official taming-transformers / QuantArt parameter names:
autoencoder (Encoder, Decoder), blocks, codebook quantizer, SGA, PatchGAN discriminator, LPIPS."""
