"""Built-in chat templates, in a registry, for tokenizers that have none (or to override theirs).

Each template is Jinja as transformers' `apply_chat_template` runs it, plus the strings that end an assistant turn
(later stages turn them into stop sequences for llama.cpp and Ollama). All are prefix-stable: rendering the first
k messages gives a prefix of rendering all of them, which the label masking in `encode.py` relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_kit.registry import Registry


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    jinja: str
    end_of_turn: tuple[str, ...]  # text that ends an assistant turn (stop strings)
    special_tokens: tuple[str, ...]  # markers that should be single tokens in the vocabulary
    description: str


CHAT_TEMPLATES: Registry = Registry("chat template", plugin_group="qlora_kit.templates")


def register(template: ChatTemplate) -> ChatTemplate:
    return CHAT_TEMPLATES.add(template.name, template)


def get_template(name: str) -> ChatTemplate:
    if name not in CHAT_TEMPLATES:
        raise KeyError(name)
    return CHAT_TEMPLATES[name]


register(ChatTemplate(
    name="chatml",
    jinja=(
        "{%- for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
    ),
    end_of_turn=("<|im_end|>",),
    special_tokens=("<|im_start|>", "<|im_end|>"),
    description="ChatML (Qwen, many community fine-tunes): <|im_start|>role ... <|im_end|>",
))

register(ChatTemplate(
    name="llama-3",
    jinja=(
        "{{- bos_token }}"
        "{%- for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
        " + '<|eot_id|>' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
    ),
    end_of_turn=("<|eot_id|>",),
    special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    description="Llama 3 / 3.1 / 3.2 instruct format",
))

register(ChatTemplate(
    name="alpaca",
    jinja=(
        "{%- if messages[0]['role'] == 'system' %}"
        "{{ messages[0]['content'] + '\\n\\n' }}{%- set loop_messages = messages[1:] %}"
        "{%- else %}"
        "{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\\n\\n' }}{%- set loop_messages = messages %}"
        "{%- endif %}"
        "{%- for message in loop_messages %}"
        "{%- if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{%- elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '### Response:\\n' }}{%- endif %}"
    ),
    end_of_turn=(),  # the tokenizer's eos token ends the turn
    special_tokens=(),
    description="Alpaca instruction format (### Instruction / ### Response), turns end with the eos token",
))

register(ChatTemplate(
    name="gemma",
    jinja=(
        # Gemma has no system role: a system message is folded into the first user turn ("SYSTEM\n\nUSER"),
        # which keeps the template prefix-stable (the system text never moves once rendered).
        "{{- bos_token }}"
        "{%- set ns = namespace(system='') %}"
        "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] %}"
        "{%- set ns.system = messages[0]['content'] + '\\n\\n' %}"
        "{%- endif %}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}"
        "{{ '<start_of_turn>user\\n' + ns.system + message['content'] + '<end_of_turn>\\n' }}{%- set ns.system = '' %}"
        "{%- elif message['role'] == 'assistant' %}"
        "{{ '<start_of_turn>model\\n' + message['content'] + '<end_of_turn>\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{%- endif %}"
    ),
    end_of_turn=("<end_of_turn>",),
    special_tokens=("<start_of_turn>", "<end_of_turn>"),
    description="Gemma instruct format (<start_of_turn>user/model ... <end_of_turn>), system folded into turn 1",
))

register(ChatTemplate(
    name="mistral",
    jinja=(
        # The system message goes before the first user message (Mistral's own v0.3 template puts it before the
        # last one, which is not prefix-stable: the system text would move as the conversation grows).
        "{{- bos_token }}"
        "{%- set ns = namespace(system='') %}"
        "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] %}"
        "{%- set ns.system = messages[0]['content'] + '\\n\\n' %}"
        "{%- endif %}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}"
        "{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}{%- set ns.system = '' %}"
        "{%- elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{%- endif %}"
        "{%- endfor %}"
    ),
    end_of_turn=(),  # the tokenizer's eos token ends the turn
    special_tokens=(),
    description="Mistral instruct format ([INST] ... [/INST] answer</s>), system prepended to the first user message",
))
