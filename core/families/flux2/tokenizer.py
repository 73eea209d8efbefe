"""Prompt tokenization for FLUX.2's text encoders, without transformers.

Reproduces what the diffusers pipelines do before running the encoder:
- Klein (`Flux2KleinPipeline._get_qwen3_prompt_embeds`, a `Qwen2TokenizerFast`): render the
  folder's chat template for a single user turn (generation prompt on, thinking off);
- [dev] (`Flux2Pipeline._get_mistral_3_small_prompt_embeds`, a Pixtral processor): render a system
  turn with BFL's system message and the user turn, both as text blocks, no generation prompt, and
  let the processor's rule decide special tokens (none added when the text starts with BOS);
then tokenize with truncation and padding to exactly `max_length` (core/blocks/chat_tokenizer.py).
"""

from __future__ import annotations

from ...blocks.chat_tokenizer import QWEN3_CHAT, ChatFormat, PromptTokenizer  # noqa: F401 (re-exported)

# BFL's system message for FLUX.2 [dev] prompt encoding (flux2/src/flux2/system_messages.py).
FLUX2_DEV_SYSTEM_MESSAGE = (
    "You are an AI that reasons about image descriptions. You give structured responses focusing on object "
    "relationships, object\nattribution and actions without speculation."
)

# [dev]: Mistral-Small-3's template through the Pixtral processor, with BFL's system message. diffusers
# removes "[IMG]" from prompts (the processor would otherwise expect an image for each).
MISTRAL_CHAT = ChatFormat(
    system_message=FLUX2_DEV_SYSTEM_MESSAGE, text_blocks=True, add_generation_prompt=False,
    removed_from_prompt=("[IMG]",), processor_special_tokens=True,
    fallback_template="{bos}[SYSTEM_PROMPT]{system}[/SYSTEM_PROMPT][INST]{prompt}[/INST]")
