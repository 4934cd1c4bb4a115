"""Graders: the reward functions of GRPO (reinforcement fine-tuning), specified as OpenAI's RFT graders are, so
that a grader moves over from OpenAI unchanged.

    from qlora_kit.graders import load_graders, GraderError, GRADER_TYPES
    with load_graders(specs, base_dir, where="grpo.graders") as graders:
        graders.score(completions, items, wheres)      # {name: [score per completion]}
        trainer_rewards = graders.reward_functions()  # TRL GRPOTrainer reward functions, one per grader

Types: string_check, text_similarity (text.py), python (python.py, run in a worker process), multi (formula.py),
tags and json_schema (formats.py), function (function.py: TRL-style reward functions, in process). OpenAI's
score_model and label_model need a judge model and are refused at load. Templates: template.py. A spec problem
is one UsageError line starting with the spec's location; a grader failing on a row at run time is one GraderError
line naming the grader and the row. Importing this package is cheap: sacrebleu and jsonschema are imported when a
grader needs them.
"""

from qlora_kit.graders.base import GraderError
from qlora_kit.graders.loader import GRADER_TYPES, Graders, load_graders

__all__ = ["GRADER_TYPES", "GraderError", "Graders", "load_graders"]
