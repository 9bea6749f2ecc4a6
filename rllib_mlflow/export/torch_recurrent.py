"""RLlib's old-stack LSTM for one time step as a torch module, for the ONNX graph.

A torch policy's own layers are traced (its fcnet, `nn.LSTM` and logits branch); a TF2
policy's are rebuilt from the snapshot's `Network`. Either way the module maps
(preprocessed observations, h, c) -> (action_dist_inputs, next h, next c), as RLlib's
`LSTMWrapper` does with a sequence of length one; the parity check proves it.
"""

from __future__ import annotations

import torch
from torch import nn

from rllib_mlflow.export.torch_network import _torch_layer
from rllib_mlflow.rllib.old_stack import restore_policy
from rllib_mlflow.rllib.snapshot import Network, PolicySnapshot


class OldStackLSTM(nn.Module):
    """(observations, h, c, *history) -> (action_dist_inputs, h, c), each [batch, ...];
    `history`: the previous action (one-hot) and/or reward, when the LSTM reads them."""

    def __init__(self, encoder: nn.Module, lstm: nn.LSTM, head: nn.Module):
        super().__init__()
        self.encoder, self.lstm, self.head = encoder, lstm, head

    def forward(
        self, observations: torch.Tensor, h: torch.Tensor, c: torch.Tensor, *history: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.encoder(observations.reshape(observations.shape[0], -1))
        if history:  # LSTMWrapper: concat([fcnet out, prev action, prev reward])
            features = torch.cat([features, *history], dim=-1)
        out, (h, c) = self.lstm(features[:, None], (h[None], c[None]))
        return self.head(out[:, 0]), h[0], c[0]


def old_stack_lstm_module(snapshot: PolicySnapshot) -> OldStackLSTM:
    if snapshot.framework == "torch":
        model = restore_policy(snapshot.module_dir).model
        model.eval()
        return OldStackLSTM(model._hidden_layers, model.lstm, model._logits_branch)
    assert snapshot.network is not None, "old-stack snapshots hold their network"
    return _rebuilt(snapshot.network)


def _rebuilt(network: Network) -> OldStackLSTM:
    (layer,) = network.lstm
    kernel, recurrent, bias = layer.weights  # Keras layout: [in, 4u], [u, 4u], [4u]
    lstm = nn.LSTM(kernel.shape[0], layer.units, batch_first=True)
    lstm.weight_ih_l0.data = torch.from_numpy(kernel.T.copy())
    lstm.weight_hh_l0.data = torch.from_numpy(recurrent.T.copy())
    lstm.bias_ih_l0.data = torch.from_numpy(bias.copy())
    lstm.bias_hh_l0.data = torch.zeros(4 * layer.units)  # Keras has one bias, torch two
    return OldStackLSTM(
        nn.Sequential(*(_torch_layer(step) for step in network.encoder)),
        lstm,
        nn.Sequential(*(_torch_layer(step) for step in network.head)),
    )
