"""Package data: atlases, denoising strategies, default model weights, demo subjects."""
