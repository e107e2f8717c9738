"""Feed-forward blocks."""

from torch import nn
from transformers.activations import ACT2FN


class MLP(nn.Module):
    """fc1 -> activation -> fc2: the transformer feed-forward of ViT, CLIP and BERT-style layers."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
