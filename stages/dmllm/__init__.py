"""Model-agnostic pieces shared by every diffusion MLLM adapter: the masked-diffusion sampler."""

from stages.dmllm.sampler import (
    REMASKING,
    SCHEDULES,
    Trajectory,
    dream_transfer_tokens,
    entropy_predictions,
    masked_diffusion_sample,
    num_transfer_tokens,
    shift_transfer_tokens,
    transfer_schedule,
    validate_schedule,
)

__all__ = ["REMASKING", "SCHEDULES", "Trajectory", "dream_transfer_tokens", "entropy_predictions",
           "masked_diffusion_sample", "num_transfer_tokens", "shift_transfer_tokens", "transfer_schedule",
           "validate_schedule"]
