"""sfedlora: federated LoRA fine-tuning of Hugging Face models, built around SFed-LoRA (Stabilized Federated
LoRA, arXiv 2603.08058: gamma = alpha * sqrt(N / r)), with the methods it is compared with.

The Python API (docs/api.md):

    import sfedlora
    result = sfedlora.run("syllogism", overrides=["fed.rounds=3"], out="runs/syl")   # a RunResult
    print(result.metric("personal", "best"))                                     # best-on-val test accuracy
    sfedlora.export(result, client=0, out="exported/vc-0")                       # PEFT adapter + merged model
"""

from sfedlora.api import RunResult, export, lm_eval, load_run, resume, run
from sfedlora.config import RunConfig, load_config
from sfedlora.core.scaling import scaling
from sfedlora.errors import SfedloraError
from sfedlora.methods import METHODS

Config = RunConfig  # the typed run configuration (sfedlora.config.schema)

__all__ = ["Config", "METHODS", "RunConfig", "RunResult", "SfedloraError", "export", "lm_eval", "load_config",
           "load_run", "resume", "run", "scaling"]
__version__ = "0.1.0"
