"""What a decision costs: the arithmetic of one greedy forward pass, layer by layer, and an energy estimate.

A layer whose input is real-valued (an image, an ANN layer's activations, the hybrid SNN's encoder output, which
is the same at every time step and computed once) costs its dense multiply-accumulates (MACs) once. A layer whose
input is spikes costs only the accumulates its spikes trigger: ACs = input firing rate x dense MACs x T, with the
firing rates measured on the evaluation episodes. Each spiking neuron's membrane update (U <- beta U + I) is one
MAC per time step. The energy estimate uses the 45 nm figures of Horowitz (ISSCC 2014) for 32-bit floats: 4.6 pJ
per MAC, 0.9 pJ per AC; it counts arithmetic only (no memory traffic) and is an estimate, not a measurement.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

import models

PJ_PER_MAC = 4.6
PJ_PER_AC = 0.9


class LayerCost(NamedTuple):
    name: str
    kind: str  # "conv" or "linear"
    input: str  # "real" or "spikes"
    dense_macs: int  # per decision and time step, as if every input were non-zero
    macs: float  # per decision (real-valued input, and neuron updates)
    acs: float  # per decision (spiking input)
    input_rate: float | None  # firing rate of its spiking input


def _dense_macs(net: nn.Module, obs_shape) -> dict[nn.Module, int]:
    """Dense MACs of one sample through each Conv2d and Linear module of `net`: a linear layer's from its shape,
    a convolution's from its output size (one forward pass with hooks; a readout may use a layer's weights
    without calling it)."""
    macs: dict[nn.Module, int] = {m: m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear)}

    def hook(module, _inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        macs[module] = int(output[0].numel() * k)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(torch.zeros((1, *obs_shape), device=next(net.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return macs


def layer_costs(net: nn.Module, obs_shape, rates: dict[str, float] | None = None) -> list[LayerCost]:
    """Per layer, what one decision of `net` costs; `rates`: each spiking layer's mean firing rate
    (models.firing_rates' names, spike0, spike1, ...), measured on the episodes the decisions come from."""
    dense = _dense_macs(net, obs_shape)
    rows = []
    if isinstance(net, models.SpikingQNetwork):
        steps = net.time_steps
        if net.encoder is not None:
            convs = [m for m in net.encoder if isinstance(m, nn.Conv2d)]
            rows += [LayerCost(f"encoder conv{i}", "conv", "real", dense[m], dense[m], 0.0, None)
                     for i, m in enumerate(convs)]
        for i, layer in enumerate(net.layers):
            module = next(m for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
            kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
            neurons = dense[module] // (module.in_features if kind == "linear" else
                                        module.in_channels * module.kernel_size[0] * module.kernel_size[1])
            updates = float(neurons * steps)  # the membrane of each neuron of this layer, every step
            if i == 0:  # the image or the encoder's output: the same at every step, its current computed once
                rows.append(LayerCost(f"layer{i}", kind, "real", dense[module], dense[module] + updates, 0.0, None))
            else:
                rate = float((rates or {}).get(f"spike{i - 1}", 0.0))
                rows.append(LayerCost(f"layer{i}", kind, "spikes", dense[module], updates,
                                      rate * dense[module] * steps, rate))
        return rows
    for i, m in enumerate(mod for mod in net.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))):
        kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
        rows.append(LayerCost(f"{kind}{i}", kind, "real", dense[m], dense[m], 0.0, None))
    return rows


def decision_cost(net: nn.Module, obs_shape, rates: dict[str, float] | None = None) -> dict:
    """Totals per decision: MACs, ACs, the mean firing rate of the spiking layers (None for an ANN) and the
    energy estimate in microjoules."""
    rows = layer_costs(net, obs_shape, rates)
    macs, acs = sum(r.macs for r in rows), sum(r.acs for r in rows)
    spiking = [v for k, v in (rates or {}).items() if k.startswith("spike")]
    return {"macs": macs, "acs": acs, "firing_rate": sum(spiking) / len(spiking) if spiking else None,
            "energy_uj": (PJ_PER_MAC * macs + PJ_PER_AC * acs) / 1e6, "layers": [r._asdict() for r in rows]}
