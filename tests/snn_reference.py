"""The naive snnTorch step-by-step loop: the reference whose spikes the fast spiking path must fire.

Every step runs the whole network on the static input, calling each `snn.Leaky` module with its
explicit membrane state, exactly as in the snnTorch tutorials. Used by the tests and by
bench/snn_speed.py (the "naive" column).
"""
import torch

from models import SpikingQNetwork, _to_float


def naive_forward(net: SpikingQNetwork, obs: torch.Tensor, spikes: list | None = None) -> torch.Tensor:
    """Q-values of the step-by-step loop; `spikes`, when given, receives each spiking layer's spikes
    stacked over the steps (`[T, B, ...]`, the shape the fast path's neuron loop returns)."""
    x = _to_float(obs)
    mems = [None] * len(net.lifs)
    per_layer = [[] for _ in net.lifs[:-1]]
    mem_rec = []
    for _ in range(net.time_steps):
        h = net.encoder(x) if net.encoder is not None else x  # recomputed every step, as a plain loop does
        for i, (layer, lif) in enumerate(zip(net.layers, net.lifs)):
            cur = layer(h)
            if mems[i] is None:
                mems[i] = torch.zeros_like(cur)  # state reset at the start of the forward pass
            spk, mems[i] = lif(cur, mems[i])
            if i < len(per_layer):
                per_layer[i].append(spk.detach())
            h = spk
        mem_rec.append(mems[-1])  # the output neuron's membrane potential
    if spikes is not None:
        spikes.extend(torch.stack(layer) for layer in per_layer)
    mem_rec = torch.stack(mem_rec)  # [T, B, A]
    if net.readout == "last":
        return mem_rec[-1]
    return mem_rec.mean(0) if net.readout == "mean" else mem_rec.max(0).values
