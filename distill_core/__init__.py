"""distill_core: the distillation method in pure PyTorch.

The objective grid (prefix source × token-level KL direction), its losses by name (``LOSSES``:
exact, sparse-teacher and sampled-token; straightforward, chunked or fused with the LM head), the
entropy-gated length curriculum, the Avg@k / Pass@k metrics and the GRPO loss for RL after
distillation. Imports only torch and the standard library.
"""

from distill_core.curriculum import EntropyGatedLengthCurriculum, doubling_ladder
from distill_core.divergences import (
    forward_kl,
    kl_terms,
    masked_mean,
    mix_kl,
    reverse_kl,
    token_entropy,
    token_weights,
)
from distill_core.fused import HeadFacts, check_fused_head, fused_kl_loss
from distill_core.grpo import group_advantages, grpo_token_loss, k3_kl
from distill_core.loss_types import HiddenStates, KLLoss, TeacherLogits, TeacherTopK
from distill_core.losses import LOSSES, LossEntry, check_loss_choice, kl_loss
from distill_core.metrics import avg_at_k, mean_pass_at_k, pass_at_k
from distill_core.objective import PRESETS, Objective
from distill_core.policy_gradient import reverse_kl_surrogate, sampled_token_logprobs
from distill_core.sparse import sparse_kl_terms

__all__ = [
    "LOSSES",
    "PRESETS",
    "EntropyGatedLengthCurriculum",
    "HeadFacts",
    "HiddenStates",
    "KLLoss",
    "LossEntry",
    "Objective",
    "TeacherLogits",
    "TeacherTopK",
    "avg_at_k",
    "check_fused_head",
    "check_loss_choice",
    "doubling_ladder",
    "forward_kl",
    "fused_kl_loss",
    "group_advantages",
    "grpo_token_loss",
    "k3_kl",
    "kl_loss",
    "kl_terms",
    "masked_mean",
    "mean_pass_at_k",
    "mix_kl",
    "pass_at_k",
    "reverse_kl",
    "reverse_kl_surrogate",
    "sampled_token_logprobs",
    "sparse_kl_terms",
    "token_entropy",
    "token_weights",
]
