"""The connector: an MLP mapping video-encoder tokens into the language model's embedding space.

Two linear layers with a GELU between them, as in LLaVA-1.5: small, and enough to let the LM
read the encoder's features (a single linear map is the ``num_layers=1`` case).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLPConnector"]


class MLPConnector(nn.Module):
    """``[B, N, in_dim]`` → ``[B, N, out_dim]``, token by token.

    Args:
        in_dim: width of the video encoder's tokens.
        out_dim: the language model's embedding width.
        hidden_dim: width of the hidden layer; defaults to ``out_dim``.
        num_layers: number of linear layers (1 = a linear projection).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        hidden_dim = hidden_dim or out_dim
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(tokens)
