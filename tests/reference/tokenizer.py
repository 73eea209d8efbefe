"""A tiny Qwen2-style tokenizer built offline, for tests that need the real tokenizer code paths.

It is a byte-level BPE trained on a short built-in English text with the same normalizer and
pre-tokenizer as Qwen's tokenizers, wrapped in `transformers.Qwen2TokenizerFast`, with Qwen's
special tokens appended after the learned vocabulary (as in the real checkpoints) and a chat
template that renders a user turn exactly like Qwen3's template does with thinking disabled.
"""

from __future__ import annotations

import functools

# Learned tokens (256 byte symbols + merges) plus the five added tokens below.
TINY_VOCAB_SIZE = 512

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS = ("<think>", "</think>")  # added but not special, as in Qwen3

# Qwen3's template, reduced to what a text-to-image prompt encoder exercises: system/user/assistant
# turns, assistant reasoning wrapped in <think>, and the empty think block that
# `enable_thinking=False` appends to the generation prompt.
QWEN3_STYLE_CHAT_TEMPLATE = """\
{%- for message in messages %}
    {%- if message.role not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unsupported role: ' + message.role) }}
    {%- endif %}
    {%- if message.role == 'assistant' and message.reasoning_content is defined %}
        {{- '<|im_start|>assistant\\n<think>\\n' + message.reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + message.content + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

_CORPUS = """\
A photograph of a red fox sitting in the snow at dawn, soft golden light, shallow depth of field.
An astronaut riding a horse across a desert under a purple sky full of stars.
A watercolor painting of a quiet harbor town with small boats and white houses on the hill.
The old lighthouse stands on the rocks while waves crash against the shore in the storm.
A bowl of fresh fruit on a wooden table: apples, pears, grapes and a single lemon.
Portrait of an elderly woman with silver hair, wearing a blue scarf, studio lighting, 85mm lens.
A futuristic city at night with neon signs, wet streets reflecting the lights, and flying cars.
A cat sleeping on a stack of books next to a window, rain on the glass, cozy atmosphere.
Mountains covered in fog at sunrise, a lake in the valley, pine trees in the foreground.
A close-up of a hummingbird drinking from a bright pink flower, high speed photography.
The text "HELLO WORLD" written in bold letters on a chalkboard in a sunny classroom.
An oil painting of a ship sailing through a green ocean, dramatic clouds, in the style of the old masters.
A small robot watering plants in a greenhouse, detailed, cinematic, 35mm film grain.
Children playing football in a park on a summer afternoon, long shadows, warm colors.
A plate of pasta with tomatoes, basil and parmesan cheese, top-down view, natural light.
A black and white photo of a busy train station in 1950, people in coats and hats.
Isometric illustration of a tiny island with a house, a tree, and a windmill, pastel colors.
A dragon made of glass flying over a medieval castle, sparkling light, fantasy art.
Macro shot of dew drops on a spider web in the early morning, blurred green background.
A cup of coffee with latte art on a marble counter, steam rising, minimalist composition.
Three apples, two bananas and 1 orange; 42 red balloons floating over the river at 7:30 pm.
She said: "It's a beautiful day, isn't it?" and we'll walk to the market before it closes.
"""


@functools.lru_cache(maxsize=1)
def _trained_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """Train the byte-level BPE once per process (the slow part); deterministic for a given corpus."""
    import json

    from tokenizers import Tokenizer, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2TokenizerFast

    # Borrow the exact normalizer and pre-tokenizer Qwen2 uses, so training splits words the same way.
    qwen_pipeline = Qwen2TokenizerFast().backend_tokenizer
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = qwen_pipeline.normalizer
    tokenizer.pre_tokenizer = qwen_pipeline.pre_tokenizer

    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE - len(SPECIAL_TOKENS) - len(THINK_TOKENS),
        min_frequency=1,
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    # The lines one by one, then the whole text with blank lines, so "\n\n" gets a token as in Qwen.
    tokenizer.train_from_iterator([*_CORPUS.splitlines(), _CORPUS.replace("\n", "\n\n")], trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = tuple(sorted(model["vocab"].items(), key=lambda item: item[1]))
    merges = tuple(tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"])
    return vocab, merges


def build_tiny_qwen_tokenizer():
    """A fresh `Qwen2TokenizerFast` of exactly TINY_VOCAB_SIZE tokens with a Qwen3-style chat template."""
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    vocab, merges = _trained_vocab_and_merges()
    tokenizer = Qwen2TokenizerFast(vocab=dict(vocab), merges=list(merges))  # adds <|endoftext|> as unk/eos/pad
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[1:]])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tokenizer.chat_template = QWEN3_STYLE_CHAT_TEMPLATE
    if len(tokenizer) != TINY_VOCAB_SIZE:
        raise AssertionError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {TINY_VOCAB_SIZE}")
    return tokenizer


# ---------------------------------------------------------------------------------------------
# A tiny Mistral-Small-3 style tokenizer and processor (FLUX.2 [dev])
# ---------------------------------------------------------------------------------------------

# Control tokens first (ids 0..), as in Mistral's Tekken vocabularies, then the learned byte-level BPE.
MISTRAL_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                          "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                          "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")
TINY_MISTRAL_VOCAB_SIZE = 448

# Tekken's split: letter runs with an optional leading non-letter, single digits, punctuation runs,
# newlines and spaces (a close relative of the pattern in Mistral's tekken.json).
_TEKKEN_STYLE_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                       r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                       r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Mistral-Small-3's chat template, reduced to what FLUX.2 [dev] exercises: BOS, a system prompt
# (string or text blocks; a dated default otherwise), user turns with text (and image) blocks.
MISTRAL_STYLE_CHAT_TEMPLATE = """\
{%- set today = strftime_now("%Y-%m-%d") %}
{%- set default_system_message = "You are a helpful assistant. Today is " + today + "." %}
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- if messages[0]['content'] is string %}
        {%- set system_message = messages[0]['content'] %}
    {%- else %}
        {%- set system_message = messages[0]['content'][0]['text'] %}
    {%- endif %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = default_system_message %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {{- '[INST]' }}
        {%- if message['content'] is string %}
            {{- message['content'] }}
        {%- else %}
            {%- for block in message['content'] %}
                {%- if block['type'] == 'text' %}
                    {{- block['text'] }}
                {%- elif block['type'] in ['image', 'image_url'] %}
                    {{- '[IMG]' }}
                {%- else %}
                    {{- raise_exception('Only text and image blocks are supported in message content!') }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '[/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported after the system message!') }}
    {%- endif %}
{%- endfor %}
"""


@functools.lru_cache(maxsize=1)
def _trained_mistral_tokenizer_json() -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    # As transformers converts tekken.json: split, then byte-level without its own regex.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_TEKKEN_STYLE_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=TINY_MISTRAL_VOCAB_SIZE, min_frequency=1,
                                  special_tokens=list(MISTRAL_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([*_CORPUS.splitlines(), _CORPUS.replace("\n", "\n\n")], trainer=trainer)
    return tokenizer.to_str()


def build_tiny_mistral_tokenizer():
    """A transformers tokenizer (tokenizers backend) with Mistral's special tokens and a Tekken-style BPE."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained_mistral_tokenizer_json()),
                                        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    if len(tokenizer) != TINY_MISTRAL_VOCAB_SIZE:
        raise AssertionError(f"tiny Mistral tokenizer has {len(tokenizer)} tokens, expected {TINY_MISTRAL_VOCAB_SIZE}")
    return tokenizer


def build_tiny_mistral_processor():
    """A text-only transformers processor around the tiny Mistral tokenizer, with the chat template.

    FLUX.2 [dev] ships a PixtralProcessor, which needs torchvision for its image half; prompts are
    text only, and `apply_chat_template` (the call diffusers makes) is ProcessorMixin's own, so a
    processor holding just the tokenizer renders and tokenizes exactly as the Pixtral one does.
    """
    processor_class = _text_only_processor_class()
    return processor_class(tokenizer=build_tiny_mistral_tokenizer(), chat_template=MISTRAL_STYLE_CHAT_TEMPLATE)


@functools.lru_cache(maxsize=1)
def _text_only_processor_class():
    """Defined on first use, so importing this module does not import transformers."""
    from transformers.processing_utils import ProcessorMixin

    class TextOnlyProcessor(ProcessorMixin):
        def __init__(self, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(tokenizer, chat_template=chat_template)

    return TextOnlyProcessor
