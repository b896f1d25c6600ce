"""Value heads: a linear layer from a decoder's hidden state to one scalar, and its file.

PPO's critic (`trainer.rl.models`) and the value-head reward model (`trainer.reward.model`)
are both such a head; each is saved as ``value_head.safetensors`` beside its LoRA adapter.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


def save_value_head(head: nn.Linear, folder: Path) -> None:
    """Write ``head``'s weights to ``folder/value_head.safetensors``."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in head.state_dict().items()}
    save_file(state, str(Path(folder) / VALUE_HEAD_FILE))


def load_value_head(folder: Path) -> nn.Linear:
    """The head saved in ``folder`` (with a bias only if it was saved with one)."""
    state = load_file(str(Path(folder) / VALUE_HEAD_FILE))
    out_features, in_features = state["weight"].shape
    head = nn.Linear(in_features, out_features, bias="bias" in state)
    head.load_state_dict(state)
    return head
