"""The eager reference: model families (llama today), their precision modes (native, emulated, fp64
oracle), weight loaders, tokenizers and the model registry."""
