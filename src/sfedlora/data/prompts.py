"""Prompt formats for instruction and math tasks (`data.template`): a record's prompt and response text.

  alpaca  the Stanford Alpaca template, with the `### Input:` section when the record has an input
          (data.input_field) and without it otherwise; the response is followed by the tokenizer's EOS
  chat    the tokenizer's own chat template (instruct models): the instruction, then the input, as one
          user turn; the response is the assistant turn as the template writes it, with its end-of-turn mark

The loss covers the response only (data.batching.encode_lm); the template is recorded in the run's
config.yaml and written beside every export (sfedlora.json).
"""

from __future__ import annotations

from typing import Any

from sfedlora.errors import SfedloraError

TEMPLATES = ("alpaca", "chat")
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def _parts(record: dict[str, Any]) -> tuple[str, str]:
    return str(record["prompt"]).strip(), str(record.get("input") or "").strip()


def check_template(template: str, tok: Any) -> None:
    if template not in TEMPLATES:
        raise SfedloraError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if template == "chat" and not getattr(tok, "chat_template", None):
        raise SfedloraError("data.template=chat needs a tokenizer with a chat template, and this model's has none: "
                            "use data.template=alpaca")


def render(record: dict[str, Any], template: str, tok: Any) -> tuple[str, str]:
    """(prompt text, response text) of one record. Alpaca's response is the record's response (the encoder
    appends EOS); chat's ends with the template's own end-of-turn mark."""
    instruction, given = _parts(record)
    if template == "alpaca":
        prompt = (ALPACA_INPUT.format(instruction=instruction, input=given) if given
                  else ALPACA_NO_INPUT.format(instruction=instruction))
        return prompt, str(record["response"])
    user = [{"role": "user", "content": f"{instruction}\n\n{given}" if given else instruction}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*user, {"role": "assistant", "content": str(record["response"])}],
                                   tokenize=False)
    if not full.startswith(prompt):
        raise SfedloraError("this tokenizer's chat template does not continue the generation prompt with the "
                            "assistant turn, so the response tokens cannot be located: use data.template=alpaca")
    return prompt, full[len(prompt):]


def describe(template: str) -> dict[str, Any]:
    """What an export records about the prompt format its model was trained with."""
    if template == "alpaca":
        return {"template": "alpaca", "prompt_input": ALPACA_INPUT, "prompt_no_input": ALPACA_NO_INPUT,
                "response_suffix": "<eos>"}
    return {"template": "chat", "note": "the tokenizer's chat template (saved with the tokenizer): the "
            "instruction and input as one user turn, the response as the assistant turn"}
