"""TRL-style reward functions for tests/test_graders.py (imported as qk_grader_rewards:NAME, base dir on sys.path)."""


def match_reward(prompts, completions, answer, **kwargs):
    """1.0 where the completion is the row's answer; also records what it was called with."""
    match_reward.calls.append({"prompts": list(prompts), "completions": list(completions), "answer": list(answer),
                               "keys": sorted(kwargs)})
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


match_reward.calls = []


def last_message_length(prompts, completions, **kwargs):
    """Conversational completions as TRL passes them: a list of messages per completion."""
    return [float(len(c[-1]["content"])) for c in completions]


def too_few(prompts, completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def says_yes(prompts, completions, **kwargs):
    return ["yes"] * len(completions)


def raises(prompts, completions, **kwargs):
    raise KeyError("answer")
