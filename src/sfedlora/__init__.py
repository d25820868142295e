"""sfedlora: federated LoRA fine-tuning of Hugging Face models, built around SFed-LoRA
(Stabilized Federated LoRA, arXiv 2603.08058: gamma = alpha * sqrt(N / r))."""

from sfedlora.core.scaling import scaling

__all__ = ["scaling"]
__version__ = "0.1.0"
