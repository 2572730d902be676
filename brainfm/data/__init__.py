"""Package data: atlases, denoising strategies, default model weights, demo subjects and the
recommended training configuration (``configs/brainfm.yaml``)."""
