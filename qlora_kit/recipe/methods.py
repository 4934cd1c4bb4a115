"""The training methods' options: `train.method` picks one; the preference methods share the `preference` section.

Which loss types and options belong to which method is declared here once (TRL 1.15's names); the recipe checks
that every option set explicitly belongs to the chosen method, so a DPO option on a KTO run is an error, not a
silently ignored key.
"""

from __future__ import annotations

from pydantic import Field

from qlora_kit.recipe.options import Section

# loss_type values each method accepts (TRL 1.15), the first being its default.
LOSS_TYPES = {
    "dpo": ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
            "apo_zero", "apo_down", "discopop", "sigmoid_norm"),
    "kto": ("kto", "apo_zero_unpaired"),
    "orpo": ("orpo",),
    "simpo": ("simpo",),
}
# beta's default per method: TRL's for dpo, kto and orpo (ORPO's lambda); SimPO's paper value (TRL's CPO has 0.1).
DEFAULT_BETA = {"dpo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}
# Options that belong to one method only (the others are shared by the preference methods).
METHOD_ONLY = {"simpo_gamma": ("simpo",), "desirable_weight": ("kto",), "undesirable_weight": ("kto",),
               "precompute_ref_log_probs": ("dpo", "kto"), "label_smoothing": ("dpo", "simpo")}


class PreferenceSection(Section):
    """Options of the preference methods (train.method dpo, orpo, kto, simpo); an error under train.method sft."""

    beta: float | None = Field(None, gt=0, description="Strength of the preference term: how far the model may move "
                               "from the reference (dpo, kto), ORPO's odds-ratio weight, SimPO's reward scale. "
                               "Default: 0.1 (dpo, kto, orpo), 2.0 (simpo).")
    loss_type: str | None = Field(None, description="The method's loss. dpo: sigmoid (default), ipo, hinge, robust, "
                                  "exo_pair, nca_pair, bco_pair, sppo_hard, aot, apo_zero, apo_down, discopop, "
                                  "sigmoid_norm. kto: kto (default), apo_zero_unpaired. orpo, simpo: their own.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="Probability that a pair's label is wrong "
                                   "(robust and exo_pair DPO losses, cDPO, SimPO).")
    simpo_gamma: float = Field(0.5, ge=0.0, description="SimPO's target reward margin (gamma).")
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the desirable rows' loss.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the undesirable rows' loss.")
    max_prompt_length: int | None = Field(None, gt=0, description="Keep at most this many prompt tokens (the end of "
                                          "the prompt, which the answer follows). Default: no limit.")
    max_completion_length: int | None = Field(None, gt=0, description="Cut each answer to this many tokens. "
                                              "Default: what model.max_seq_length leaves after the prompt.")
    precompute_ref_log_probs: bool = Field(False, description="Score every row with the reference once before "
                                           "training (dpo, kto): no reference forward during training.")


def check_method(method: str, pref: PreferenceSection) -> None:
    """The preference options set (to other than their defaults) must belong to train.method (ValueError naming
    the field). Values, not `model_fields_set`: a dumped and reloaded recipe (run directories record one) has every
    field set."""
    given = {name for name, f in type(pref).model_fields.items() if getattr(pref, name) != f.default}
    if method in ("sft", "grpo") and given:
        raise ValueError(f"preference.{sorted(given)[0]} applies to the preference methods, but train.method is "
                         f"{method}; set train.method: dpo (or orpo, kto, simpo), or remove the preference section")
    if method in ("sft", "grpo"):
        return
    for name in sorted(given):
        if name in METHOD_ONLY and method not in METHOD_ONLY[name]:
            raise ValueError(f"preference.{name} applies to train.method {' or '.join(METHOD_ONLY[name])}, not "
                             f"{method}")
    if pref.loss_type is not None and pref.loss_type not in LOSS_TYPES[method]:
        raise ValueError(f"preference.loss_type: {pref.loss_type!r} is not a {method} loss; {method} accepts: "
                         f"{', '.join(LOSS_TYPES[method])}")
