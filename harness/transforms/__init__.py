"""What changes a model, each a function from model to model: shard, quantize, W8A8 (SmoothQuant and fp8),
plant a fault."""
