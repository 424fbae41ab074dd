"""``tinynorm.models``: every network of the seed tutorial, under the seed's names.

Each class has the seed's constructor arguments and parameter names, so the state_dict of
the seed's PyTorch class loads unchanged::

    model = tinynorm.models.Transformer(12, 768, 12, 3072)
    model.load_state_dict({k: v.numpy() for k, v in seed_torch_model.state_dict().items()})
"""
from .blocks import (ModernTransformerBlock, PostNormTransformerBlock, PreNormTransformerBlock,
                     Transformer, TransformerBlockWithResiduals)
from .deep import DeepNetworkWithoutResiduals, DeepNetworkWithResiduals
from .lm import CausalLM, deepnorm_alpha, deepnorm_beta
from .norms import ComposedLayerNorm, ComposedRMSNorm, LayerNorm, RMSNorm

__all__ = [
    "DeepNetworkWithoutResiduals", "DeepNetworkWithResiduals", "LayerNorm", "RMSNorm",
    "ComposedLayerNorm", "ComposedRMSNorm",
    "TransformerBlockWithResiduals", "PostNormTransformerBlock", "PreNormTransformerBlock",
    "ModernTransformerBlock", "Transformer", "CausalLM", "deepnorm_alpha", "deepnorm_beta",
]
