"""One logit comparison for every "does this model still behave like that one?" check: the merge's fidelity
(merged vs the trained adapter) and the GGUF export's verification (llama.cpp vs transformers).

Per token, in float32: max |delta logit|, KL(reference || candidate), top-1 agreement; with labels, the loss of
both on the trained (unmasked) tokens. Inputs are per-row [tokens, vocab] arrays, torch tensors or numpy.
"""

from __future__ import annotations

from qlora_kit.data.encode import IGNORE_INDEX


def compare_logits(reference, candidate, labels: list[list[int]] | None = None) -> dict:
    import torch

    max_diff, kl_sum, agree, count = 0.0, 0.0, 0, 0
    loss_ref, loss_cand, loss_n = 0.0, 0.0, 0
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        ref, cand = torch.as_tensor(ref).float(), torch.as_tensor(cand).float()
        max_diff = max(max_diff, (ref - cand).abs().max().item())
        logp, logq = ref.log_softmax(-1), cand.log_softmax(-1)
        kl_sum += (logp.exp() * (logp - logq)).sum().item()
        agree += (ref.argmax(-1) == cand.argmax(-1)).sum().item()
        count += ref.shape[0]
        if labels is not None:  # position t predicts token t + 1
            targets = torch.tensor(labels[i][1:])
            mask = targets != IGNORE_INDEX
            if mask.any():
                loss_ref -= logp[:-1][mask].gather(-1, targets[mask][:, None]).sum().item()
                loss_cand -= logq[:-1][mask].gather(-1, targets[mask][:, None]).sum().item()
                loss_n += int(mask.sum())
    # KL is >= 0; tiny negative sums are float rounding of identical distributions.
    out = {"max_abs_logit_diff": max_diff, "mean_kl": max(0.0, kl_sum / max(count, 1)),
           "top1_agreement": agree / max(count, 1)}
    if labels is not None:
        out.update(loss_reference=loss_ref / max(loss_n, 1), loss_candidate=loss_cand / max(loss_n, 1))
    return {**out, "tokens": count}


def log_probs(logits):
    """log_softmax over the vocabulary as float32 numpy ([tokens, vocab] from torch or numpy): `eval`'s losses."""
    import torch

    return torch.as_tensor(logits).float().log_softmax(-1).numpy()
