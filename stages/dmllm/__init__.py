"""Model-agnostic pieces shared by every diffusion MLLM adapter: the masked-diffusion sampler."""

from stages.dmllm.sampler import (
    REMASKING,
    Trajectory,
    masked_diffusion_sample,
    num_transfer_tokens,
    validate_schedule,
)

__all__ = ["REMASKING", "Trajectory", "masked_diffusion_sample", "num_transfer_tokens", "validate_schedule"]
